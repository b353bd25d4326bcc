"""Bit-identity check for refactors: hashes of the pixels, latents and infotexts of a fixed set of jobs.

    python scripts/bit_identity.py before.json     # on the commit before the change
    python scripts/bit_identity.py after.json      # after it
    diff before.json after.json                    # nothing: every image is bit-identical

The jobs: every sampler (txt2img, batch 2), five schedule types, variation seeds, AND, a LoRA and an embedding,
clip skip, hires fix with four upscalers and on an earlier result, img2img with five samplers, loopback, an X/Y/Z
grid, a stepped run, SD2 and SDXL txt2img and hires, the panel's Generate button, and the toy model. Not a test:
the hashes are this code's own output, useful only to compare two versions of it on one machine.
"""
import hashlib
import json
import os
import sys
import tempfile

os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from nbdiffuse import Session  # noqa: E402
from nbdiffuse.models import tiny_sd1, tiny_sd2, tiny_sdxl  # noqa: E402
from nbdiffuse.ui import Panel  # noqa: E402

torch.set_num_threads(1)

out = {}
def h(result, *args, **kwargs):
    """The hash of a Result (or of ``result(*args, **kwargs)``'s), or the error that job stopped with."""
    if callable(result):
        try:
            result = result(*args, **kwargs)
        except RuntimeError as e:  # since issue 17 a job stops on NaN/inf latents instead of a black image
            return f"{type(e).__name__}: {str(e)[:60]}"
    d = hashlib.sha256()
    for im in result.images:
        d.update(np.asarray(im).tobytes())
    if result.latents is not None:
        d.update(result.latents.float().numpy().tobytes())
    d.update("\n".join(result.infotexts).encode())
    return d.hexdigest()[:16]

tmp = tempfile.mkdtemp()
root = os.path.join(tmp, "webui")
os.makedirs(root + "/models/Lora")
os.makedirs(root + "/embeddings")
g = torch.Generator().manual_seed(0)
tb = "down_blocks_0_attentions_0_transformer_blocks_0"
t = {}
for key in [f"lora_unet_{tb}_attn2_to_k", "lora_te_text_model_encoder_layers_0_self_attn_q_proj"]:
    t[f"{key}.lora_down.weight"] = torch.randn(4, 32, generator=g) * .5
    t[f"{key}.lora_up.weight"] = torch.randn(32, 4, generator=g) * .5
    t[f"{key}.alpha"] = torch.tensor(4.0)
save_file(t, root + "/models/Lora/detail.safetensors")
torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=torch.Generator().manual_seed(1))}},
           root + "/embeddings/shinystyle.pt")

s = Session(outputs_dir=os.path.join(tmp, "out"), progress=False, models_dir=root)
s.load(tiny_sd1())
B = dict(prompt="a red [circle:square:0.5] (big:1.2)", negative_prompt="blurry", width=64, height=64, seed=7)
for name in ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
             "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++",
             "PLMS", "UniPC", "LCM"]:
    out[f"t2i {name}"] = h(s.txt2img, sampler_name=name, steps=5, batch_size=2, **B)
for sch in ["Karras", "Exponential", "SGM Uniform", "Align Your Steps", "Beta"]:
    out[f"t2i Euler {sch}"] = h(s.txt2img, sampler_name="Euler", scheduler=sch, steps=6, **B)
out["t2i subseed"] = h(s.txt2img, sampler_name="Euler a", steps=4, subseed=3, subseed_strength=0.3, n_iter=2, **B)
out["t2i AND"] = h(s.txt2img, **{**B, "prompt": "a red circle AND a blue square:0.7"}, steps=4)
out["t2i lora"] = h(s.txt2img, **{**B, "prompt": "a red circle <lora:detail:0.8> shinystyle"}, steps=3)
out["t2i clip_skip"] = h(s.txt2img, clip_skip=2, steps=3, **B)
hr = s.txt2img(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, steps=4, **B)
out["hires latent"] = h(hr)
for up in ["Latent (nearest-exact)", "Lanczos", "None"]:
    out[f"hires {up}"] = h(s.txt2img, enable_hr=True, hr_scale=1.5, hr_upscaler=up, steps=3, hr_second_pass_steps=2,
                                     hr_sampler_name="DPM++ 2M", hr_prompt="a blue circle", **B)
out["hires_fix later"] = h(s.hires_fix, s.txt2img(steps=3, **B), denoising_strength=0.5)
base = s.txt2img(steps=3, **B)
for name in ["Euler a", "DPM++ 2M", "DDIM", "UniPC", "DPM++ SDE"]:
    out[f"i2i {name}"] = h(s.img2img, init_images=base.images, sampler_name=name, steps=6, denoising_strength=0.55, **B)
out["loopback"] = h(s.loopback, init_images=base.images, loops=2, steps=4, denoising_strength=0.5, **B)
grid = s.xyz(x=("Sampler", "Euler a, DPM++ 2M"), y=("CFG Scale", "3, 7"), show=False, steps=3, **B)
out["xyz grid"] = hashlib.sha256(np.asarray(grid.grid).tobytes()).hexdigest()[:16]
out["xyz info"] = grid.infotext
steps = list(s.steps(sampler_name="Euler a", steps=4, **B))
out["steprun"] = hashlib.sha256(b"".join(st.x.numpy().tobytes() for st in steps)).hexdigest()[:16]
for mk, label in [(tiny_sd2, "sd2"), (tiny_sdxl, "sdxl")]:
    s.load(mk())
    out[f"{label} t2i"] = h(s.txt2img, sampler_name="DPM++ 2M", steps=4, **B)
    out[f"{label} hires"] = h(s.txt2img, sampler_name="Euler", steps=3, enable_hr=True, hr_upscaler="Latent", **B)
# panel generate
s.load(tiny_sd1())
p = Panel(s, lang="en")
for name, value in dict(prompt="a red circle", steps=3, width=64, height=64, seed=1234, sampler_name="Euler a",
                       batch_size=2).items():
    getattr(p.w, name).value = value
p.w.generate.click()
r = p.wait(300)
p.close()
out["panel"] = h(r)
# toy
s.load("toy")
out["toy"] = h(s.txt2img, prompt="a red circle on a blue background", steps=8, seed=3)
out["toy hires"] = h(s.txt2img, prompt="a red circle on a blue background", steps=6, seed=3, enable_hr=True,
                               hr_upscaler="Latent", denoising_strength=0.6)
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out, indent=1))
