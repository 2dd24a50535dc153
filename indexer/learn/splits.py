"""Group-disjoint train / validation / test splits: the one place a split is made.

Images of one group (source image, patient, near-duplicate cluster) are never split across
parts, so no test query can meet its own twin through training or model selection. Images
(`random_group_split`), feature rows (`patient_split`, used by feature training, the feature and
slide-level evaluations and their benchmarks) and named groups (`explicit_group_split`,
`named_group_split`) are all cut here, by the same seeded shuffle.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.ingest.sources import ArchiveImage
from model.errors import HistosearchError


class SplitError(HistosearchError, ValueError):
    """A split that cannot be made: unknown group names, or no group left for a part."""


# Shuffles `random_group_split` tries at most when the archive has labels.
SPLIT_CANDIDATES = 64


@dataclass(frozen=True)
class GroupSplit:
    """Group names of each part; training never sees a label, validation picks checkpoints."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        parts = [set(self.train), set(self.validation), set(self.test)]
        if (parts[0] & parts[1]) or (parts[0] & parts[2]) or (parts[1] & parts[2]):
            raise SplitError("a group appears in two parts of the split")
        if not self.train:
            raise SplitError("the split leaves no group for training")

    def entries(self, entries: Sequence[ArchiveImage], part: str) -> list[ArchiveImage]:
        groups = set(getattr(self, part))
        return [entry for entry in entries if entry.group in groups]


def random_group_split(
    entries: Sequence[ArchiveImage],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> GroupSplit:
    """Shuffle the distinct groups with ``seed`` and cut them by fraction (at least one group in
    each non-empty part).

    Validation and test retrieval count only neighbours from other groups, so a part whose groups
    share no class scores nothing whatever the model, and checkpoints chosen on it are chosen by
    chance (the demo archive's first shuffle gave a validation part of two slides sharing one
    class of eight). With labels known, up to `SPLIT_CANDIDATES` shuffles from the seed are tried
    and the first that gives the most held-out items a same-class item in another group of their
    part is kept. Labels only choose the split; training never sees them.
    """
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise SplitError("fractions must be >= 0 and leave some groups for training")
    groups = sorted({entry.group for entry in entries})
    shuffler = random.Random(seed)
    labelled = any(entry.label is not None for entry in entries)
    best, best_share = None, -1.0
    for _ in range(SPLIT_CANDIDATES if labelled else 1):
        candidate = _shuffled_cut(groups, validation_fraction, test_fraction, shuffler)
        share = findable_share(candidate, entries) if labelled else 1.0
        if share > best_share:
            best, best_share = candidate, share
        if best_share == 1.0:
            break
    assert best is not None
    return best


def patient_split(
    groups: Iterable[str], validation_fraction: float, test_fraction: float, seed: int
) -> GroupSplit:
    """The distinct ``groups`` (patients) shuffled once with ``seed`` and cut by fraction (at
    least one group in each part): `random_group_split`'s cut of unlabelled items, made once so
    that every variant is chosen on the same validation patients and reported on the same test
    patients. Both fractions must be positive."""
    if validation_fraction <= 0 or test_fraction <= 0 or validation_fraction + test_fraction >= 1:
        raise SplitError("fractions must be > 0 and leave some groups for training")
    distinct = sorted(set(groups))
    split = _shuffled_cut(distinct, validation_fraction, test_fraction, random.Random(seed))
    if not split.train:
        raise SplitError(f"{len(distinct)} groups are too few for three parts")
    return split


def _shuffled_cut(
    groups: list[str], validation_fraction: float, test_fraction: float, shuffler: random.Random
) -> GroupSplit:
    """Shuffle ``groups`` in place and cut: test first, then validation, the rest trains."""
    n_test = _part_size(len(groups), test_fraction)
    n_validation = _part_size(len(groups), validation_fraction)
    if n_test + n_validation >= len(groups):
        raise SplitError(f"{len(groups)} groups are too few for three parts")
    shuffler.shuffle(groups)
    return GroupSplit(
        train=tuple(sorted(groups[n_test + n_validation :])),
        validation=tuple(sorted(groups[n_test : n_test + n_validation])),
        test=tuple(sorted(groups[:n_test])),
    )


def findable_share(split: GroupSplit, entries: Sequence[ArchiveImage]) -> float:
    """The smaller, over validation and test, of the share of labelled items whose class also
    lies in another group of the same part (1.0 for a part that is empty or unlabelled)."""
    shares = []
    for part in ("validation", "test"):
        labelled = [e for e in split.entries(entries, part) if e.label is not None]
        groups_of_label: dict[str, set[str]] = {}
        for entry in labelled:
            groups_of_label.setdefault(str(entry.label), set()).add(entry.group)
        findable = sum(len(groups_of_label[str(e.label)]) > 1 for e in labelled)
        shares.append(findable / len(labelled) if labelled else 1.0)
    return min(shares)


def _part_size(total: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, round(total * fraction))


def explicit_group_split(
    entries: Sequence[ArchiveImage],
    validation_groups: Sequence[str],
    test_groups: Sequence[str],
) -> GroupSplit:
    """Named validation and test groups; every other group trains. Unknown names are an error."""
    known = {entry.group for entry in entries}
    unknown = sorted((set(validation_groups) | set(test_groups)) - known)
    if unknown:
        raise SplitError(f"groups not in the data: {unknown}")
    held_out = set(validation_groups) | set(test_groups)
    return GroupSplit(
        train=tuple(sorted(known - held_out)),
        validation=tuple(sorted(validation_groups)),
        test=tuple(sorted(test_groups)),
    )


def named_group_split(
    groups: Iterable[str],
    validation_groups: Sequence[str] | None,
    test_groups: Sequence[str] | None,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> GroupSplit:
    """Named held-out groups, the part not named drawn by fraction from the others with
    ``seed``; with none named, `patient_split`. A named test group is never trained on, and
    names not among ``groups`` are an error."""
    distinct = sorted(set(groups))
    if not validation_groups and not test_groups:
        return patient_split(distinct, validation_fraction, test_fraction, seed)
    named = set(validation_groups or ()) | set(test_groups or ())
    unknown = sorted(named - set(distinct))
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise SplitError(f"groups not in the data: {unknown[:10]}{more}")
    rest = sorted(set(distinct) - named)
    random.Random(seed).shuffle(rest)
    test = list(test_groups or ())
    if not test:
        cut = _part_size(len(distinct), test_fraction)
        test, rest = rest[:cut], rest[cut:]
    validation = list(validation_groups or ())
    if not validation:
        cut = _part_size(len(distinct), validation_fraction)
        validation, rest = rest[:cut], rest[cut:]
    return GroupSplit(
        train=tuple(sorted(rest)),
        validation=tuple(sorted(set(validation))),
        test=tuple(sorted(set(test))),
    )


def read_group_file(path: Path) -> list[str]:
    """Group names from a text file, one a line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SplitError(f"{path}: cannot read the group file ({error})") from None
    names = [line.split("#", 1)[0].strip() for line in lines]
    return [name for name in names if name]
