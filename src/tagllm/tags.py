"""Tags in text and in embedding space.

A tag such as ``<SMILES>`` is ``p`` learned vectors. Text is split at tag names; the text
pieces are tokenised by the base tokenizer and each tag occurrence becomes ``p`` *virtual
ids* ``>= vocab_rows`` (ids the base vocabulary can never produce). :meth:`TagBank.splice`
turns a batch of ids into input embeddings in one vectorised step: base ids go through the
frozen embedding layer, virtual ids index the concatenated tag table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tagllm.config import TAG_RE, TagConfig
from tagllm.data import LengthLimit
from tagllm.errors import ConfigError, DataError, InputTooLongError, UnknownTagError, did_you_mean

__all__ = ["InputTooLongError", "TagBank", "TagTokenizer", "UnknownTagError", "pad_batch"]



def tag_as_words(config: TagConfig) -> str:
    """A tag written as plain text: its init_text when it starts from one (``"Spanish:"``),
    else its name without the brackets and a colon (``<SMILES>`` -> ``"SMILES:"``)."""
    if config.init == "text" and config.init_text.strip():
        return config.init_text.strip()
    return config.name.strip("<>") + ":"


class ResidualMLP(nn.Module):
    """Residual reparameterisation of a tag's vectors (Residual Prompt Tuning, Razdaibiedina
    et al. 2023): ``P + up(relu(down(P)))``, one MLP shared by the ``p`` vectors. ``up``
    starts at zero, so an untrained tag equals its plain vectors."""

    def __init__(self, hidden_size: int, width: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, width)
        self.up = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:  # (p, H) -> (p, H)
        return vectors + self.up(torch.relu(self.down(vectors)))


class TagBank(nn.Module):
    """All tags of a model: their configs and their ``(p, hidden)`` embedding parameters
    (with ``reparam: residual_mlp``, an MLP that reparameterises them while they train)."""

    def __init__(self, hidden_size: int, vocab_rows: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.vocab_rows = vocab_rows  # first virtual id
        self.configs: dict[str, TagConfig] = {}
        self.embeddings = nn.ParameterList()
        self.reparams = nn.ModuleDict()  # by str(index): the tags that have one
        #: by str(index), the deep tags' offsets (layers - 1, p, H): added to the hidden
        #: states at the tag's positions at the input of decoder layers 1 .. layers - 1
        self.deep = nn.ParameterDict()
        self._index: dict[str, int] = {}
        self._offsets: list[int] = []

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def names(self) -> list[str]:
        return list(self._index)

    def add(self, config: TagConfig, init: torch.Tensor, layers: int = 0,
            deep: torch.Tensor | None = None) -> None:
        """Add a tag with ``init`` (p, H) as its vectors; a deep tag also gets offsets for
        the inputs of decoder layers 1 .. ``layers`` - 1: ``deep``, or zeros."""
        if config.name in self._index:
            raise ConfigError(f"tag {config.name} is already in the model")
        if tuple(init.shape) != (config.num_tokens, self.hidden_size):
            raise ConfigError(
                f"tag {config.name}: embedding shape {tuple(init.shape)} != "
                f"({config.num_tokens}, {self.hidden_size})"
            )
        self._offsets.append(sum(int(p.shape[0]) for p in self.embeddings))
        self._index[config.name] = len(self.embeddings)
        self.configs[config.name] = config
        self.embeddings.append(nn.Parameter(init.detach().clone().float()))
        if config.depth == "deep":
            shape = (layers - 1, config.num_tokens, self.hidden_size)
            if deep is not None and tuple(deep.shape) != shape:
                raise ConfigError(f"tag {config.name}: deep offsets of shape "
                                  f"{tuple(deep.shape)} != {shape} ({layers} layers)")
            self.deep[str(self._index[config.name])] = nn.Parameter(
                (deep.detach().clone() if deep is not None else torch.zeros(shape)).float()
                .to(self.embeddings[-1].device))
        if config.reparam == "residual_mlp":
            self.reparams[str(self._index[config.name])] = ResidualMLP(
                self.hidden_size, config.reparam_size).to(self.embeddings[-1].device)

    def parameter(self, name: str) -> nn.Parameter:
        """The stored ``(p, H)`` parameter of ``name`` (before any reparameterisation)."""
        return self.embeddings[self._index[self.require(name)]]

    def reparam(self, name: str) -> ResidualMLP | None:
        return self.reparams[k] if (k := str(self._index[self.require(name)])) in \
            self.reparams else None

    def vectors(self, name: str) -> torch.Tensor:
        """The ``(p, H)`` vectors ``name`` puts in the input (through its MLP if it has
        one): what a tag file stores and a digest covers."""
        mlp = self.reparam(name)
        return self.parameter(name) if mlp is None else mlp(self.parameter(name))

    def deep_offsets(self, name: str) -> nn.Parameter | None:
        """The (layers - 1, p, H) offsets of a deep tag (None for an input tag)."""
        k = str(self._index[self.require(name)])
        return self.deep[k] if k in self.deep else None

    def tag_parameters(self, name: str) -> list[nn.Parameter]:
        """Everything that trains ``name``: its parameter, its MLP's and its deep offsets."""
        mlp, deep = self.reparam(name), self.deep_offsets(name)
        return [self.parameter(name), *(mlp.parameters() if mlp is not None else ()),
                *([deep] if deep is not None else [])]

    def snapshot(self, name: str) -> torch.Tensor:
        """Every value ``name`` puts into a forward pass, flattened (its vectors, then its
        deep offsets): what a digest covers and a cached prefix depends on."""
        deep = self.deep_offsets(name)
        v = self.vectors(name)
        return v if deep is None else torch.cat([v.flatten(), deep.flatten()])

    def layer_offsets(self, layer: int, input_ids: torch.Tensor, like: torch.Tensor
                      ) -> torch.Tensor | None:
        """(B, T, H) what the deep tags add to the hidden states ``like`` at the input of
        decoder layer ``layer`` (>= 1) for ``input_ids`` (B, T), or None if nothing."""
        is_tag = input_ids >= self.vocab_rows  # (B, T)
        if not len(self.deep) or not bool(is_tag.any()):
            return None
        rows = [self.deep[str(i)][layer - 1] if str(i) in self.deep else
                like.new_zeros(self.configs[n].num_tokens, self.hidden_size)
                for n, i in self._index.items()]
        table = torch.cat(rows).to(device=like.device, dtype=like.dtype)  # (N, H)
        tag_rows = (input_ids - self.vocab_rows).clamp(min=0, max=table.shape[0] - 1)
        return torch.where(is_tag.unsqueeze(-1), table[tag_rows], 0)  # (B, T, H)

    def require(self, name: str) -> str:
        if name not in self._index:
            known = ", ".join(self.names) or "(none)"
            raise UnknownTagError(f"unknown tag {name}; known tags: {known}"
                                  f"{did_you_mean(name, self.names)}")
        return name

    def virtual_ids(self, name: str) -> list[int]:
        i = self._index[self.require(name)]
        start = self.vocab_rows + self._offsets[i]
        return list(range(start, start + self.configs[name].num_tokens))

    def last_virtual_id(self, name: str) -> int:
        return self.virtual_ids(name)[-1]

    def table(self) -> torch.Tensor:
        """All tag vectors stacked: (sum of p, H)."""
        if not len(self.embeddings):
            return torch.zeros(0, self.hidden_size)
        return torch.cat([self.vectors(n) for n in self._index], dim=0)

    def splice(self, input_ids: torch.Tensor, embed: nn.Module) -> torch.Tensor:
        """Input embeddings for ids that mix base ids and virtual tag ids.

        input_ids: (B, T) long. Returns (B, T, H) in the embedding layer's dtype.
        """
        is_tag = input_ids >= self.vocab_rows  # (B, T)
        x = embed(input_ids.masked_fill(is_tag, 0))  # (B, T, H)
        if not bool(is_tag.any()):
            return x
        table = self.table().to(device=x.device, dtype=x.dtype)  # (N, H)
        tag_rows = (input_ids - self.vocab_rows).clamp(min=0, max=table.shape[0] - 1)
        return torch.where(is_tag.unsqueeze(-1), table[tag_rows], x)  # (B, T, H)


@dataclass
class Encoded:
    """One tokenised input: ids (base and virtual) and the tags it contains."""

    ids: list[int]
    tags: list[str]


class TagTokenizer:
    """Splits text at tag names and tokenises the pieces with the base tokenizer.

    Whitespace around a tag is dropped: a tag is its own delimiter, so ``"<SMILES> CCO"``
    and ``"<SMILES>CCO"`` encode the same. Leading special tokens that the base tokenizer
    adds (a BOS token for Llama or Gemma) are kept at the start of every input.
    """

    def __init__(self, tokenizer, bank: TagBank, strict: bool = True) -> None:
        self.tokenizer = tokenizer
        self.bank = bank
        self.strict = strict
        with_special = tokenizer("a")["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        n = len(with_special) - len(plain)
        self.prefix_ids: list[int] = list(with_special[:n]) if n > 0 and (
            with_special[n:n + len(plain)] == plain) else []

    def split(self, text: str) -> list[tuple[str, bool]]:
        """(piece, is_tag) pairs; raises UnknownTagError for an unknown tag in strict mode."""
        parts: list[tuple[str, bool]] = []
        pos = 0
        for m in TAG_RE.finditer(text):
            name = m.group(0)
            if name not in self.bank:
                if self.strict:
                    self.bank.require(name)
                continue  # not a tag: left in the text piece
            parts.append((text[pos:m.start()], False))
            parts.append((name, True))
            pos = m.end()
        parts.append((text[pos:], False))
        return parts

    def encode(self, text: str, max_length: int | None = None, where: str = "") -> Encoded:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where or 'input'}: empty input text")
        ids, tags = self._ids(text)
        if max_length is not None and len(ids) > max_length:
            raise InputTooLongError(
                f"{where or 'input'}: {len(ids)} tokens > max_length {max_length} "
                "(inputs are never truncated silently; raise max_length or shorten the input)"
            )
        return Encoded(ids, tags)

    def count(self, text: str) -> int:
        """The number of ids :meth:`encode` gives ``text`` (linear in its length)."""
        return len(self._ids(text)[0])

    def _ids(self, text: str) -> tuple[list[int], list[str]]:
        ids = list(self.prefix_ids)
        tags: list[str] = []
        for piece, is_tag in self.split(text):
            if is_tag:
                ids.extend(self.bank.virtual_ids(piece))
                tags.append(piece)
            elif piece.strip():
                ids.extend(self.tokenizer(piece.strip(), add_special_tokens=False)["input_ids"])
        return ids, tags

    def length_limit(self, template: str, max_length: int, skip: bool = False,
                     hint: str = "raise max_length or shorten the input",
                     log: Callable[[str], None] | None = None) -> LengthLimit:
        """The check that rows rendered with ``template`` fit ``max_length`` tokens, which
        data readers apply before a row's chemistry or biology."""
        return LengthLimit(template, max_length, self.count, skip, hint, log)

    def encode_batch(
        self, texts: Sequence[str], max_length: int | None = None, where: str = "input"
    ) -> list[Encoded]:
        return [self.encode(t, max_length, where=f"{where} {i}") for i, t in enumerate(texts)]


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad id lists into (input_ids, attention_mask, position_ids), each (B, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        else:
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def counting_tokenizer(tokenizer, configs: Sequence[TagConfig]) -> TagTokenizer:
    """A :class:`TagTokenizer` that knows the tags' names and lengths but holds no vectors:
    it measures inputs before the base model loads."""
    bank = TagBank(0, len(tokenizer))
    for c in configs:
        bank.add(c, torch.zeros(c.num_tokens, 0))
    return TagTokenizer(tokenizer, bank)
