"""The corpus the ingest flow tests share."""

from __future__ import annotations

from pathlib import Path


def write_corpus(root: Path, notes: int = 4, sentences: int = 40) -> Path:
    """A small mixed-format corpus (Markdown, text, HTML with boilerplate) plus `notes` long notes."""
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "travel.md").write_text(
        "# Travel policy\n\n## Flights\n\nEconomy class for flights under six hours.\n\n"
        "## Hotels\n\nHotels up to 180 EUR per night in Berlin.\n"
    )
    (root / "faq.txt").write_text("The support line opens at 08:00 CET.\n\nTickets are answered within 4 hours.\n")
    (root / "guide.html").write_text(
        "<html><head><title>Probe guide</title></head><body><nav>Home | Login</nav><main><h1>Probe guide</h1>"
        "<p>Reset the probe by holding the button for 10 seconds.</p></main><footer>(c) Acme</footer></body></html>"
    )
    for i in range(notes):
        (root / f"note-{i}.md").write_text(f"# Note {i}\n\n" + " ".join(f"Sentence {j} of note {i}." for j in range(sentences)))
    return root
