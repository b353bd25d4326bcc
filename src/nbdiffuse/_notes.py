"""A job's notes to the user: each said once, however many images or batches meet the same condition."""


def note_once(notes: list[str], note: str) -> None:
    """Add ``note`` to ``notes`` unless the job already said it."""
    if note not in notes:
        notes.append(note)
