"""Tags that ship with tagllm, loaded by a short name (``--tags smiles``, ``--load protein``).

Each is an ordinary tag folder (``tag.safetensors`` + ``tag.json``) under
``tagllm/shipped_tags/MODEL/``, written by one of the project's recipes and copied unchanged
from the tag store: ``tag.json`` records its base model, its training data and settings, and
the checksum that every load verifies, as for any tag folder. A short name stands for the
tag folders a task needs, in load order (a function tag after the domain tags it was
trained on). A local path of the same name wins over a short name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tagllm.errors import TagFileError, did_you_mean

#: the folder of the shipped tag folders, one sub-folder per base model
SHIPPED_DIR = Path(__file__).parent / "shipped_tags"


@dataclass(frozen=True)
class ShippedTags:
    """A short name for tag folders that ship with tagllm.

    Attributes:
        name: the short name (case ignored), e.g. ``smiles``.
        model: the embedded base model the tags were trained for.
        folders: tag folders under :data:`SHIPPED_DIR`, in load order.
        summary: what the tags are and how they were trained.
    """

    name: str
    model: str
    folders: tuple[str, ...]
    summary: str

    def paths(self) -> list[Path]:
        return [SHIPPED_DIR / f for f in self.folders]


SHIPPED: dict[str, ShippedTags] = {t.name: t for t in (
    ShippedTags("smiles", "smollm2", ("smollm2/SMILES",),
                "the domain tag <SMILES> for SMILES strings: stage 1 of recipes/qed.yaml "
                "(next-token prediction on 2,000 MOSES molecules, 40 steps of 16)"),
    ShippedTags("qed", "smollm2", ("smollm2/SMILES", "smollm2/QED"),
                "the function tag <QED> (drug-likeness, a regression head) with the <SMILES> "
                "it was trained on: recipes/qed.yaml (stage 2 on 3,600 MOSES molecules, 400 "
                "more for validation; 900 steps at tag lr 1e-4 with the head re-fitted every "
                "50 steps, validation kept step 750); the run's results: "
                "smollm2/qed-results.json"),
    ShippedTags("protein", "smollm2", ("smollm2/Protein",),
                "the domain tag <Protein> for amino-acid sequences: stage 1 of "
                "recipes/descriptor.yaml (next-token prediction on 589 protein sequences, "
                "40 steps of 8)"),
    ShippedTags("translate", "gemma3",
                tuple(f"gemma3/{t}" for t in ("en", "fr", "de", "it", "es", "pt", "ru",
                                              "Translate")),
                "the language tags <en> <fr> <de> <it> <es> <pt> <ru> and the function tag "
                "<Translate> (the model's own LM head) for Gemma-3-270M: recipes/"
                "translate.yaml (stage 1: next-token prediction on 300 Bible verses per "
                "language, 70 steps of 8; stage 2: 120 steps of 8 on English<->X verse "
                "pairs; Spanish<->Portuguese never trained). Prompt '<es> TEXT <Translate> "
                "<pt>' and stop at the line break; the run's results: "
                "gemma3/translate-results.json"),
)}


def shipped_folders(spec: str | Path) -> list[Path] | None:
    """The tag folders a short name stands for, or None when ``spec`` is not one (or is an
    existing local path, which wins)."""
    entry = SHIPPED.get(str(spec).strip().lower())
    if entry is None or Path(spec).exists():
        return None
    return entry.paths()


def not_found(spec: str | Path) -> TagFileError:
    """The error for a tag argument that is neither a path, a Hub id nor a short name."""
    return TagFileError(f"{spec}: no such tag folder, and not the name of a shipped tag"
                        f"{did_you_mean(spec, SHIPPED)} (shipped: {', '.join(SHIPPED)})")
