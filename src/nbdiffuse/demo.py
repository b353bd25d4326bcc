"""``python -m nbdiffuse.demo``: generate and save images on the CPU, then reproduce one from its PNG.

Uses the embedded toy model (a trained SD1-architecture model of coloured shapes, shipped in the package and loaded
through the same single-file path as any A1111 checkpoint): encoding, our sampling loop with several A1111 samplers,
VAE decode, infotexts, saving, reproduction from the PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", default="outputs", help="outputs folder (default: ./outputs)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    import nbdiffuse
    from nbdiffuse import infotext

    session = nbdiffuse.Session(outputs_dir=args.outputs, progress=False)
    session.load("toy")
    print(f"{session}  ({session.model.info['load_line']})")
    last = None
    # No PLMS: on the toy model at CFG 7 it needs ~50 steps (as in A1111; see toy/MODEL_CARD.md).
    for sampler in ("DPM++ 2M", "Euler a", "DPM++ 2M SDE", "DDIM", "UniPC"):
        result = session.txt2img(prompt="a red circle on a blue background", negative_prompt="blurry",
                                 sampler_name=sampler, steps=args.steps, seed=1234, width=64, height=64)
        print(f"\n{result.paths[0]}\n{result.infotexts[0]}\n{result.info}")
        last = result
    text = infotext.read_png(last.paths[0])
    again = session.txt2img(**infotext.to_params(text))
    same = np.array_equal(np.asarray(again.images[0]), np.asarray(last.images[0]))
    print(f"\nReproduced {Path(last.paths[0]).name} from its PNG infotext: "
          f"{'pixel-identical' if same else 'DIFFERENT'} -> {again.paths[0]}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
