"""Figures and notebook views: what a prompt becomes, latents and upscalers, trajectories, activations."""

from .latents import approx_rgb, compare_upscalers, explain_hires, psnr, show_latents, ssim
from .prompts import PromptExplanation, explain_prompt

__all__ = ["PromptExplanation", "approx_rgb", "compare_upscalers", "explain_hires", "explain_prompt", "psnr",
           "show_latents", "ssim"]
