"""A1111 hypernetworks: small MLPs that rewrite the keys' and values' input of the UNet's attention layers.

A hypernetwork file (``models/hypernetworks/NAME.pt``, A1111's ``torch.save`` of a dict) holds, for each context
width it was trained for (``768`` for SD1's text encoder, and often ``320``/``640``/``1280``, the UNet's own
widths), a pair of MLPs (one for k, one for v) as state dicts, next to how they are built: ``layer_structure``
(widths as multiples of the input, ``[1, 2, 1]``), ``activation_func``, ``is_layer_norm``, ``use_dropout``,
``last_layer_dropout``, ``dropout_structure``, ``activate_output``. Each MLP is ``x + mlp(x) * strength``.

:func:`apply_hypernetworks` hooks them into a UNet for a job, as A1111's attention does: every attention layer's
``to_k`` and ``to_v`` input (its context: the text for cross-attention, the image tokens for self-attention)
whose width a hypernetwork has a pair for goes through that pair, hypernetworks in the prompt's order. The hooks
come off with ``handle.remove()``. Files are read through ``torch.load(weights_only=True)`` only
(:func:`~nbdiffuse.models.state_dict.load_pickle`).

>>> from nbdiffuse.models import tiny_sd1
>>> net = Hypernetwork.random(dims=(32,), seed=0)
>>> handle = apply_hypernetworks(tiny_sd1().unet, [(net, 0.5)])
>>> handle.hooked > 0
True
>>> handle.remove()
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nbdiffuse.models.errors import ModelLoadError


def _activations() -> dict:
    """A1111's activation names: its own few, then every ``torch.nn`` activation class by its lower-case name."""
    table = {"linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
             "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
    acts = torch.nn.modules.activation
    table.update({name.lower(): cls for name, cls in inspect.getmembers(acts, inspect.isclass)
                  if cls.__module__ == acts.__name__})
    return table


def dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list:
    """Dropout after each layer, for files that predate ``dropout_structure`` (A1111's reading of the old flags):
    0.3 after every hidden layer but the last, which has it only with ``last_layer_dropout``.

    >>> dropout_structure([1, 2, 2, 1], True, False)
    [0, 0.3, 0, 0]
    """
    if not use_dropout:
        return [0] * len(layer_structure)
    return [0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0] + [0]


class HypernetworkModule(torch.nn.Module):
    """One MLP of a hypernetwork (k or v for one width), with A1111's layer order so its state dict keys
    (``linear.0.weight``, ...) are the file's: Linear, activation (not after the last unless ``activate_output``),
    LayerNorm, Dropout."""

    def __init__(self, dim: int, layer_structure, activation: str | None = None, layer_norm: bool = False,
                 activate_output: bool = False, dropouts=None):
        super().__init__()
        if layer_structure[0] != 1 or layer_structure[-1] != 1:
            raise ValueError(f"layer_structure must start and end with 1, got {list(layer_structure)}")
        acts = _activations()
        if activation not in (None, "linear") and activation not in acts:
            raise ValueError(f"unsupported activation function {activation!r}")
        layers = []
        n = len(layer_structure) - 1
        for i in range(n):
            width = int(dim * layer_structure[i + 1])
            layers.append(torch.nn.Linear(int(dim * layer_structure[i]), width))
            if activation not in (None, "linear") and (i < n - 1 or activate_output):
                layers.append(acts[activation]())
            if layer_norm:
                layers.append(torch.nn.LayerNorm(width))
            if dropouts is not None and dropouts[i + 1] > 0:
                layers.append(torch.nn.Dropout(p=dropouts[i + 1]))
        self.linear = torch.nn.Sequential(*layers)
        self.eval()

    def forward(self, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * strength


_OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


@dataclass
class Hypernetwork:
    """A hypernetwork read from an A1111 ``.pt`` file: ``layers[width] = (k module, v module)``."""

    name: str
    layers: dict
    path: Path | None = None
    settings: dict = field(default_factory=dict)

    @classmethod
    def random(cls, dims=(768,), layer_structure=(1, 2, 1), activation="relu", seed: int = 0, scale: float = 0.1,
               name: str = "random") -> Hypernetwork:
        """A hypernetwork with random weights (for tests and examples).

        >>> sorted(Hypernetwork.random(dims=(32, 64)).layers)
        [32, 64]
        """
        g = torch.Generator().manual_seed(seed)
        layers = {}
        for dim in dims:
            pair = tuple(HypernetworkModule(dim, list(layer_structure), activation) for _ in range(2))
            for module in pair:
                for p in module.parameters():
                    p.data = torch.randn(p.shape, generator=g) * scale
            layers[dim] = pair
        return cls(name, layers, settings={"layer_structure": list(layer_structure), "activation_func": activation})

    def widths(self) -> list[int]:
        return sorted(self.layers)


def load_hypernetwork(path) -> Hypernetwork:
    """Read an A1111 hypernetwork file; :class:`~nbdiffuse.models.errors.ModelLoadError` naming the file when it
    is not one (or wants code run).

    >>> net = load_hypernetwork("models/hypernetworks/anime.pt")   # doctest: +SKIP
    >>> net.widths()                                               # doctest: +SKIP
    [320, 640, 768, 1280]
    """
    from nbdiffuse.models.state_dict import load_pickle

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(path, "no such file")
    data = load_pickle(path)
    pairs = {k: v for k, v in data.items() if isinstance(k, int)} if isinstance(data, dict) else {}
    if not pairs:
        raise ModelLoadError(path, "not an A1111 hypernetwork: no per-width (k, v) module pairs (integer keys)")
    structure = list(data.get("layer_structure") or [1, 2, 1])
    use_dropout = bool(data.get("use_dropout", False))
    dropouts = data.get("dropout_structure")
    if dropouts is not None and any(dropouts):
        use_dropout = True
    if dropouts is None:
        dropouts = dropout_structure(structure, use_dropout, bool(data.get("last_layer_dropout", False)))
    settings = {"layer_structure": structure, "activation_func": data.get("activation_func"),
                "is_layer_norm": bool(data.get("is_layer_norm", False)), "use_dropout": use_dropout,
                "dropout_structure": list(dropouts), "activate_output": bool(data.get("activate_output", True))}
    layers = {}
    for dim, pair in sorted(pairs.items()):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, dict) for s in pair)):
            raise ModelLoadError(path, f"not an A1111 hypernetwork: width {dim} holds no (k, v) state dict pair")
        modules = []
        for sd in pair:
            sd = {_OLD_KEYS.get(k, k): v for k, v in sd.items()}
            try:
                module = HypernetworkModule(dim, structure, settings["activation_func"], settings["is_layer_norm"],
                                            settings["activate_output"], dropouts)
                module.load_state_dict(sd)
            except (ValueError, RuntimeError) as e:
                raise ModelLoadError(path, f"hypernetwork width {dim} does not match its settings "
                                           f"({str(e).strip().splitlines()[0]})") from None
            modules.append(module.requires_grad_(False))
        layers[dim] = tuple(modules)
    return Hypernetwork(str(data.get("name") or path.stem), layers, path, settings)


class HypernetworkHooks:
    """The forward pre-hooks :func:`apply_hypernetworks` installed; :meth:`remove` takes them all off."""

    def __init__(self, handles: list):
        self.handles = handles
        self.hooked = len(handles)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()


def _hook(chain: list, which: int):
    def pre_hook(module, args):
        x = args[0]
        out = x
        for net, strength in chain:
            pair = net.layers.get(x.shape[-1])
            if pair is not None:
                mlp = pair[which]
                weight = mlp.linear[0].weight
                if weight.device != x.device:  # memory modes move the UNet between devices
                    mlp.to(x.device)
                out = mlp(out.to(weight.dtype), strength)
        if out is x:
            return None
        return (out.to(x.dtype), *args[1:])

    return pre_hook


def apply_hypernetworks(unet: torch.nn.Module, entries) -> HypernetworkHooks:
    """Hook ``entries`` (``(Hypernetwork, strength)`` pairs, applied in order) into every attention layer's
    ``to_k``/``to_v`` input in ``unet``. The MLPs run in their own dtype (float32 in A1111's files) on the
    input's device. Returns the hooks: ``.remove()`` restores the UNet."""
    from diffusers.models.attention_processor import Attention

    chain = [(net, float(strength)) for net, strength in entries]
    handles = []
    try:
        for module in unet.modules():
            if isinstance(module, Attention) and hasattr(module, "to_k") and hasattr(module, "to_v"):
                handles.append(module.to_k.register_forward_pre_hook(_hook(chain, 0)))
                handles.append(module.to_v.register_forward_pre_hook(_hook(chain, 1)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return HypernetworkHooks(handles)
