"""One UNet key map for loading, saving and LoRA: the names follow the UNet's own block layout."""

import torch
from safetensors.torch import load_file

from nbdiffuse.models.bundle import ModelBundle
from nbdiffuse.models.checkpoint import load_checkpoint
from nbdiffuse.models.keymap import UNET_PREFIX, unet_key_map, unet_ldm_prefixes, unet_name_to_ldm
from nbdiffuse.models.save import save_checkpoint


def _odd_unet():
    """Two resnets per level, three levels, attention only on the deeper two, 1/2/3 transformer blocks."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, layers_per_block=2, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8, transformer_layers_per_block=[1, 2, 3])


def test_an_unusual_block_layout_saves_and_loads_bit_identically(sd1, tmp_path):
    unet = _odd_unet()
    names = unet_key_map(unet)
    assert len(set(names.values())) == len(names)  # one LDM name per parameter
    assert names["down_blocks.2.attentions.1.transformer_blocks.2.attn2.to_k.weight"] == \
        "input_blocks.8.1.transformer_blocks.2.attn2.to_k.weight"
    assert names["up_blocks.1.upsamplers.0.conv.weight"] == "output_blocks.5.2.conv.weight"
    bundle = ModelBundle(unet=unet, vae=sd1.vae, text_encoders=sd1.text_encoders, tokenizers=sd1.tokenizers,
                         arch="sd1", prediction_type="epsilon", alphas_cumprod=sd1.alphas_cumprod)
    loaded = load_checkpoint(save_checkpoint(bundle, tmp_path / "odd.safetensors"), hash=False)
    before, after = unet.state_dict(), loaded.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_lora_layer_names_are_the_names_in_the_checkpoint_file(sdxl, tmp_path):
    tensors = load_file(save_checkpoint(sdxl, tmp_path / "xl.safetensors"))
    prefixes = unet_ldm_prefixes(sdxl.unet)
    layers = [(n, m) for n, m in sdxl.unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert layers
    for name, module in layers:
        key = UNET_PREFIX + unet_name_to_ldm(name, prefixes) + ".weight"
        assert torch.equal(tensors[key], module.weight), name
