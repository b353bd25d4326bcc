"""Figures and notebook views: what a prompt becomes, latents and upscalers, inpainting masks, SD upscale's tiles,
trajectories, activations."""

from .activations import activation_grid
from .latents import approx_rgb, compare_upscalers, explain_hires, psnr, show_latents, ssim
from .masks import show_mask
from .prompts import PromptExplanation, explain_prompt
from .tiles import show_tiles
from .trajectory import trajectory, trajectory_stats

__all__ = ["PromptExplanation", "activation_grid", "approx_rgb", "compare_upscalers", "explain_hires",
           "explain_prompt", "psnr", "show_latents", "show_mask", "show_tiles", "ssim", "trajectory",
           "trajectory_stats"]
