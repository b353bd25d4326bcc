"""Progress bars: tqdm's (its widget in a notebook, text elsewhere), with a notebook output that is right where no
widget renders.

tqdm's notebook bar is displayed once with the text of its first moment (``txt2img:   0%|          | 0/20``), which
a front end without widgets (nbconvert's HTML, VS Code offline, some SageMaker set-ups) keeps showing after the job
ended. Here that output has a display id and is updated when the bar closes: to its last line, or to nothing for a
bar that goes away (``leave=False``), as the widget does.
"""

from __future__ import annotations

import functools

VIEW = "application/vnd.jupyter.widget-view+json"


class _ClosingText:
    """The notebook bar's own display, and its update when it closes (a mixin over tqdm's notebook class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, display=False, **kwargs)
        self._handle = None
        if not self.disable and getattr(self, "container", None) is not None:
            from IPython.display import display

            self._handle = display(self._bundle(repr(self.container)), raw=True, display_id=True)
            self.displayed = True

    def _bundle(self, text: str) -> dict:
        container = self.container
        data = {"text/plain": text}
        if getattr(container, "comm", None) is not None:  # closed (leave=False): nothing left to show
            data[VIEW] = {"version_major": 2, "version_minor": 0, "model_id": container.model_id}
        return data

    def close(self):
        handle, self._handle = getattr(self, "_handle", None), None
        super().close()
        if handle is not None:
            kept = self.leave or (self.total and self.n < self.total)  # tqdm keeps a bar that stopped early
            handle.update(self._bundle(repr(self.container) if kept else ""), raw=True)


@functools.cache
def _notebook_class(base: type) -> type:
    return type("NotebookProgress", (_ClosingText, base), {})


def progress_bar(total: int, desc: str, *, leave: bool = True, initial: int = 0, disable: bool = False):
    """``tqdm.auto.tqdm(total=total, desc=desc, ...)``; in a notebook, the bar's output ends as its last line (or
    empty with ``leave=False``) for viewers without widgets.

    >>> bar = progress_bar(3, "steps", disable=True)
    >>> bar.update(3); bar.close()
    """
    from tqdm.auto import tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    cls = _notebook_class(tqdm) if issubclass(tqdm, notebook_tqdm) and not disable else tqdm
    return cls(total=total, desc=desc, leave=leave, initial=initial, disable=disable)


__all__ = ["progress_bar"]
