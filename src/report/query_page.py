"""The files of one query's ranking (`eval_iterative.py --query_image ... --output_file
FILE`): the ranking as JSON in FILE, and beside it a small page, FILE with the suffix
.html, showing the reference, the text and the results with their ranks and scores, its
thumbnails in `{stem}_thumbs/` (the report's templates and thumbnails: src/report/html.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.errors import ArgumentError
from src.experiment_io import write_json_atomic
from src.report.html import Thumb, Thumbnails, render
from src.use.trained_round import QueryAnswer


@dataclass
class QueryView:
    model: str
    gallery: str
    text: str
    reference: Thumb
    reference_path: str
    left_out: list[str]
    target: str | None  # a query of the split's own: its labelled target (marked green)
    results: list[Thumb]


def check_output_file(output_file: str | Path) -> None:
    """Refuse a ranking file whose page would overwrite it (one line, before any work)."""
    if query_page_path(output_file) == Path(output_file):
        raise ArgumentError(
            f"--output_file {output_file}: give the JSON's path; the page is written beside it "
            "(.html)"
        )


def query_page_path(output_file: str | Path) -> Path:
    """Where the page of a ranking written to `output_file` goes."""
    return Path(output_file).with_suffix(".html")


def write_query_page(answer: QueryAnswer, page: Path) -> Path:
    thumbs = Thumbnails(page.with_name(f"{page.stem}_thumbs"))
    view = QueryView(
        model=f"round {answer.round} of {answer.experiment}",
        gallery=f"{answer.gallery} ({answer.gallery_size} images)",
        text=answer.query_text,
        reference=Thumb(thumbs(answer.query_image), "reference"),
        reference_path=answer.query_image,
        left_out=answer.left_out,
        target=answer.target,
        results=[
            Thumb(
                thumbs(hit.path),
                f"{hit.rank}: {hit.name} ({hit.score:.3f})"
                + (": target" if hit.name == answer.target else ""),
                "target" if hit.name == answer.target else "",
            )
            for hit in answer.results
        ],
    )
    page.write_text(render("query.html.j2", view=view))
    return page


def write_query_outputs(answer: QueryAnswer, output_file: str | Path) -> tuple[Path, Path]:
    """The ranking as JSON in `output_file` and its page beside it; returns both paths."""
    output = Path(output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, answer.to_json())
    return output, write_query_page(answer, query_page_path(output))
