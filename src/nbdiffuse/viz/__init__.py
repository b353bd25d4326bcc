"""Figures and notebook views: what a prompt becomes, and (more to come) latents, trajectories, attention."""

from .prompts import PromptExplanation, explain_prompt

__all__ = ["PromptExplanation", "explain_prompt"]
