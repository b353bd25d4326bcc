"""The one error type model loading raises for a bad file (checkpoints, VAEs, and available to LoRA/embeddings)."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model file (or folder, or name) could not be loaded: ``str(e)`` names it and says what is wrong.

    ``path`` is the file, ``problem`` the explanation without the path.

    >>> from nbdiffuse import Session
    >>> try:
    ...     Session(outputs_dir=None).load("no-such-model.safetensors")
    ... except ModelLoadError as e:
    ...     print(e.problem)
    no such file or folder (and no models_dir is configured to look the name up in)
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
