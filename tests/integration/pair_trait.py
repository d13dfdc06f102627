"""A small paired trait written to a temp dir, for tests that need a real extraction run quickly."""

from __future__ import annotations

import json
from pathlib import Path

PAIRS = [("How was your weekend?", "Wonderful, sunny and fun.", "Awful, rainy and dull."),
         ("How is the new job?", "I love it, great people.", "I hate it, rude people."),
         ("Will the project finish?", "Yes, early and well.", "No, late and badly."),
         ("How do you feel today?", "Great and hopeful!", "Tired and hopeless."),
         ("What about Mondays?", "A fresh start, lovely.", "Dreadful, as always."),
         ("How was the trip?", "Amazing views, happy days.", "Boring, it rained all week.")]


def write_pair_trait(d: Path, extraction_yaml: str | None = None) -> Path:
    """A small paired trait (6 prompts with given optimistic / pessimistic responses) at directory d."""
    d.mkdir(parents=True)
    for i, name in ((1, "positive"), (2, "negative")):
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p[0], "response": p[i]}) + "\n"
                                                 for p in PAIRS))
    if extraction_yaml is not None:
        (d / "extraction.yaml").write_text(extraction_yaml)
    return d
