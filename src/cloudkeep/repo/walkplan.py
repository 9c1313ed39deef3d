"""How much work lies below each folder of a first backup, counted before the walk starts.

Worker processes take whole folders (``procsubtree.py``): a folder handed over too large leaves
the other workers idle at the end, too small costs a job per few files. One pass over the sources
(names, types and file sizes: ~0.3 s for 60,000 entries, while the workers start) gives every
folder its subtree's work, so the walk hands over folders of a bounded size, splits a large folder
of files into parts, and walks into the rest itself. It also finds the large files, which are read
first (``earlyread.py``): the last one walked had kept one worker busy alone at the end. It is only
an estimate: what changes meanwhile, or cannot be listed, is what the walk finds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudkeep.repo.masks import matches_any


@dataclass
class WalkPlan:
    """Per folder (host path): the work of its subtree, and of its subfolders' subtrees only."""

    work: dict[str, int] = field(default_factory=dict)
    nested: dict[str, int] = field(default_factory=dict)
    total: int = 0
    large: list[str] = field(default_factory=list)  # files of at least the size asked for, largest first

    def keep(self, most: int) -> None:
        """Forget the folders inside ones of ``most`` work or less (those go to a worker whole,
        which walks them itself): a machine of millions of files keeps a few entries, not a few
        per folder."""
        work = self.work
        kept = {
            path
            for path, total in work.items()
            if total > most or work.get(path.rpartition("/")[0], 0) > most
        }
        self.work = {path: work[path] for path in kept}
        self.nested = {path: self.nested[path] for path in kept}


def plan_walk(
    bases: list[str],
    masks: tuple[list[str], str],
    entry: int,
    large: int,
    enough: int,
    reached: Callable[[], None],
) -> WalkPlan:
    """The plan for the source folders ``bases`` (host paths), without what the exclude masks
    leave out (``masks``: them and the host folder holding the machine's "/"): each entry counts
    as ``entry`` bytes of work besides its content (``filecontent.FILE_WORK``); files of ``large``
    bytes or more are named. ``reached`` is called once the work counted so far is ``enough``
    (the workers start while the pass goes on)."""
    plan = _Pass(WalkPlan(), masks[0], masks[1], entry, large, enough, reached)
    for base in bases:
        plan.plan.total += plan.walk(base)
    found = sorted(plan.found, reverse=True)
    plan.plan.large = [path for _, path in found]
    return plan.plan


@dataclass
class _Pass:
    plan: WalkPlan
    excludes: list[str]
    prefix: str
    entry: int
    large: int
    enough: int
    reached: Callable[[], None] | None
    counted: int = 0
    found: list[tuple[int, str]] = field(default_factory=list)

    def walk(self, top: str) -> int:
        """``top``'s subtree work; each folder's below it goes into the plan."""
        paths: list[str] = []
        parents: list[int] = []  # each folder's parent's index in ``paths`` (-1: the top)
        own: list[int] = []
        stack = [(top, -1)]
        while stack:
            path, parent = stack.pop()
            index = len(paths)
            paths.append(path)
            parents.append(parent)
            own.append(self.folder(path, index, stack))
        work = list(own)
        for index in range(len(paths) - 1, 0, -1):  # a folder comes after its parent
            work[parents[index]] += work[index]
        for path, mine, total in zip(paths, own, work):
            self.plan.work[path] = total
            self.plan.nested[path] = total - mine
        return work[0]

    def folder(self, path: str, index: int, stack: list[tuple[str, int]]) -> int:
        """The work of the folder's own entries; its subfolders go on ``stack``."""
        mine = self.entry
        try:
            with os.scandir(path or "/") as entries:  # "" is the host's root, as the walk names it
                for entry in entries:
                    at = f"{path}/{entry.name}"
                    if self.excludes and matches_any(self.excludes, at, self.prefix):
                        continue
                    mine += self.entry
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((at, index))
                        elif entry.is_file(follow_symlinks=False):
                            size = entry.stat(follow_symlinks=False).st_size
                            mine += size
                            if size >= self.large:
                                self.found.append((size, at))
                    except OSError:
                        pass
        except OSError:
            pass  # the walk finds out why
        self.counted += mine
        if self.reached is not None and self.counted >= self.enough:
            self.reached()
            self.reached = None
        return mine
