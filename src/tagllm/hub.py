"""Tags on the Hugging Face Hub: push a tag folder with a model card, load one by repo id.

A pushed repository holds one tag folder's two files unchanged at its root, or several tag
folders (a recipe's ``out/tags``: a function tag with the domain tags it was trained on) as
sub-folders; ``tag.safetensors`` and ``tag.json`` are verified (checksum, shapes, base-model
fingerprint) on every load. A generated ``README.md`` carries the YAML metadata the Hub
indexes (``base_model``, ``library_name: tagllm``, tags, metrics). Wherever a tag folder is
accepted, ``ORG/NAME`` (or ``ORG/NAME@REVISION``) that is not a local path is fetched with
``snapshot_download`` into the Hugging Face cache (offline: read from it), then verified
like any folder.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tagllm._version import __version__
from tagllm.backbones import EMBEDDED
from tagllm.errors import TagFileError
from tagllm.records import JSONObject
from tagllm.serialization import META, TENSORS, read_tag
from tagllm.shipped import not_found, shipped_folders

CARD = "README.md"
#: ``org/name`` or ``org/name@revision``, as the Hub spells repo ids
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")


def is_repo_id(spec: str | Path) -> bool:
    """Whether ``spec`` names a Hub repository rather than an existing local path."""
    return not Path(spec).exists() and bool(REPO_ID.match(str(spec)))


def resolve_tag_dir(spec: str | Path) -> Path:
    """A local folder for ``spec``: the path itself, or the Hub snapshot of the repo it
    names (downloaded into the Hugging Face cache, or read from it when offline). The
    files are verified by whoever reads them (:func:`read_tag`). The short name of one
    shipped tag folder (``smiles``) stands for that folder."""
    shipped = shipped_folders(spec)
    if shipped is not None:
        if len(shipped) > 1:
            raise TagFileError(f"{spec}: the shipped name stands for {len(shipped)} tag "
                               "folders; load them with --tags / tags=[...]")
        return shipped[0]
    if not is_repo_id(spec):
        if not Path(spec).exists() and len(Path(spec).parts) == 1:
            raise not_found(spec)  # a bare word: a mistyped short name more likely
        return Path(spec)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    repo, _, revision = str(spec).partition("@")
    try:
        local = snapshot_download(repo, revision=revision or None,
                                  allow_patterns=[META, TENSORS, CARD, f"*/{META}",
                                                  f"*/{TENSORS}"],
                                  library_name="tagllm", library_version=__version__)
    except (OSError, ValueError, EntryNotFoundError) as e:
        raise TagFileError(f"{spec}: no such local tag folder, and the Hub repository "
                           f"{repo!r} could not be fetched: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    d = Path(local)
    if not tag_folders_in(d):
        raise TagFileError(f"{spec}: the Hub repository {repo!r} holds no {META}; is it a "
                           "tagllm tag?")
    return d


def tag_folders_in(d: Path) -> list[Path]:
    """``d`` when it is a tag folder, else its sub-folders that are (sorted by name)."""
    if (d / META).exists() or not d.is_dir():
        return [d]
    return sorted(x for x in d.iterdir() if (x / META).is_file())


def tag_folders(spec: str | Path) -> list[Path]:
    """The tag folders ``spec`` stands for: a tag folder, a folder of tag folders, a Hub
    repository holding either, or the short name of tags that ship with tagllm (``smiles``;
    :mod:`tagllm.shipped`)."""
    shipped = shipped_folders(spec)
    if shipped is not None:
        return shipped
    return tag_folders_in(resolve_tag_dir(spec)) or [Path(spec)]


def base_model_id(name: str) -> str:
    """The Hub id of a base model name (an embedded default's original repository)."""
    return EMBEDDED[name].hub_id if name in EMBEDDED else name


def model_card(metas: list[JSONObject], repo_id: str) -> str:
    """README.md for a repository of tags: YAML metadata (built with huggingface_hub's own
    ``ModelCardData``), then per tag what it is, what it was trained on and its scores, and
    how to load it."""
    from huggingface_hub import ModelCardData

    bases = {str(m.get("base_model", {}).get("name")) for m in metas}
    if len(bases) != 1:
        raise TagFileError(f"the tags to push are for different base models {sorted(bases)}; "
                           "push them to separate repositories")
    base = metas[0].get("base_model", {})
    heads = sorted({(m["config"].get("head") or {}).get("kind") for m in metas} - {None})
    metrics = sorted({k for m in metas for e in _evals(m) for k in (e.get("metrics") or {})})
    names = ", ".join(m["name"] for m in metas)
    shown = ", ".join(f"`{m['name']}`" for m in metas)  # a bare <QED> is an HTML tag
    data = ModelCardData(
        base_model=base_model_id(str(base.get("name", ""))), library_name="tagllm",
        tags=["tagllm", "tag-llm", "learned-input-tags",
              *sorted({f"{m['kind']}-tag" for m in metas}), *(f"{h}-head" for h in heads)],
        metrics=metrics or None, model_name=f"{names} ({repo_id})")
    embedded = EMBEDDED.get(str(base.get("name")))
    body = [
        f"# {shown}: learned input tags for {base.get('name')}", "",
        "Tags trained with [tagllm](https://pypi.org/project/tagllm/) (Tag-LLM, arXiv "
        f"2402.05140) on the frozen base model `{base.get('name')}` "
        f"({base.get('architecture')}). The base model's weights are not in this repository "
        "and were not changed.", "",
        f"Base model fingerprint `{base.get('fingerprint')}`: tagllm refuses to load these "
        "tags on any other weights"
        + (f" (`{base.get('name')}` is tagllm's embedded {embedded.display_name})"
           if embedded else "") + ".", "",
        "```python", "from tagllm import TaggedModel",
        f'model = TaggedModel.from_pretrained("{base.get("name")}", tags=["{repo_id}"])',
        "```", "",
        f"or `tagllm predict --tags {repo_id} ...` (see `tagllm predict --help`).", "",
    ]
    for m in metas:
        body += _tag_section(m)
    body += [f"Each `{META}` holds the full provenance (data fingerprints, settings, "
             "metrics).", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def _evals(meta: JSONObject) -> list[JSONObject]:
    prov = meta.get("provenance") or {}
    return [e for e in prov.get("eval", []) or [] if isinstance(e, dict)]


def _tag_section(meta: JSONObject) -> list[str]:
    """One tag's part of the card."""
    prov = meta.get("provenance") or {}
    head = (meta["config"].get("head") or {}).get("kind")
    out = [f"## `{meta['name']}`", "",
           f"A {meta['kind']} tag of {meta['num_tokens']} vectors of size "
           f"{meta['hidden_size']}" + (f" with a {head} head" if head else "") + "; trained "
           "with the frozen tags "
           f"{', '.join(f'`{t}`' for t in meta.get('trained_with') or {}) or 'none'}; "
           f"recipe {prov.get('recipe')}, stage {(prov.get('stage') or {}).get('name')}; "
           f"created {meta.get('created')} with tagllm "
           f"{meta.get('versions', {}).get('tagllm')}.", ""]
    data = prov.get("data", []) or []
    if data:
        out += ["| training data | rows | skipped |", "|---|---|---|",
                *(f"| {_md(d.get('source'))} | {d.get('rows')} | {d.get('skipped', 0)} |"
                  for d in data if isinstance(d, dict)), ""]
    for e in _evals(meta):
        out.append(f"- evaluation {_md(e.get('name', ''))} ({e.get('rows')} rows): "
                   + _scores(e.get("metrics")))
        for method, scores in (e.get("baselines") or {}).items():
            out.append(f"  - {_md(method)}: {_scores(scores)}")
    return out + ([""] if _evals(meta) else [])


def _md(text: Any) -> str:
    """Text for Markdown outside code spans (a bare <QED> would be read as HTML)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _scores(metrics: Any) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items()
                     if isinstance(v, int | float)) if isinstance(metrics, dict) else ""


def stage_for_hub(tagdir: str | Path, repo_id: str, target: str | Path) -> Path:
    """Write what a push uploads into ``target``: each tag's files, verified and unchanged
    (at the root for one tag, in sub-folders for a folder of tags), and the model card."""
    src = Path(tagdir)
    dirs = tag_folders_in(src)
    if not dirs:
        raise TagFileError(f"{src}: neither a tag folder nor a folder of tag folders")
    metas = [read_tag(d)[0] for d in dirs]
    out = Path(target)
    for d in dirs:
        dest = out if d == src else out / d.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in (META, TENSORS):
            shutil.copy2(d / f, dest / f)
    (out / CARD).write_text(model_card(metas, repo_id), encoding="utf-8")
    return out


def push(tagdir: str | Path, repo_id: str, private: bool = False, token: str | None = None,
         commit_message: str | None = None, api: Any = None) -> str:
    """Create ``repo_id`` (if needed) and upload the tag folder (or folder of tag folders)
    with its model card; returns the commit URL. ``api``: an ``HfApi`` (default: a new
    one, which takes the token from ``token``, ``HF_TOKEN`` or ``hf auth login``)."""
    if not REPO_ID.match(repo_id) or "@" in repo_id:
        raise TagFileError(f"{repo_id!r} is not a Hub repository id (ORG/NAME)")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(library_name="tagllm", library_version=__version__)
    with tempfile.TemporaryDirectory(prefix="tagllm-push-") as tmp:
        folder = stage_for_hub(tagdir, repo_id, tmp)  # verified before anything is created
        names = [json.loads(f.read_text())["name"] for f in sorted(folder.rglob(META))]
        api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token,
                                 commit_message=commit_message or
                                 f"tagllm {__version__}: {', '.join(names)}")
    return str(getattr(info, "commit_url", info))
