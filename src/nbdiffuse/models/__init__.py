"""Models: A1111/ComfyUI single-file checkpoints read offline (architecture from the file's shapes), external
VAEs, and writing a model back in A1111's layout.

>>> from nbdiffuse import models
>>> bundle = models.load_checkpoint("model.safetensors")                # doctest: +SKIP
>>> models.save_checkpoint(bundle, "model-fp16.safetensors", torch.float16)   # doctest: +SKIP
"""

from .._lazy import lazy_exports

_LAZY = {
    "ModelBundle": ".bundle", "ModelLoadError": ".errors",
    "load_checkpoint": ".checkpoint", "inspect_checkpoint": ".checkpoint", "load_vae": ".checkpoint",
    "import_model_classes": ".checkpoint",  # a first load's import stage, done ahead (warm a process, time loads)
    "save_checkpoint": ".save",
    # the mask + masked-image latents an inpainting model (9-channel UNet) takes, as A1111 makes them
    "inpainting_conditioning": ".inpainting", "txt2img_conditioning": ".inpainting",
    # tiny random models of the real architectures, built from config in a second (tests, teaching, benchmarks)
    "tiny_sd1": "..testing", "tiny_sd2": "..testing", "tiny_sdxl": "..testing", "tiny_sdxl_refiner": "..testing",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
