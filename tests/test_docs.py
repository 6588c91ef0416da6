"""Docs that cannot go stale (issue 29).

Every fenced ``python`` and ``bash`` block of README.md and docs/*.md runs exactly as printed, page
by page, in a fresh temporary folder holding ``photo.jpg`` (the bundled demo photo), ``photos/``
(two photos), ``clip.mp4`` (a few frames made from the photo) and, when the shared test data is
present, ``data/widerface`` and ``data/weights/*`` linked in the README's layout. ``retinaface-tf``
and ``python`` on the PATH run this checkout. The python blocks of a page share one interpreter
(later blocks may use what earlier ones defined); each bash block runs in ``bash -e -o pipefail``.

A block preceded by ``<!-- doctest: skip (reason) -->`` is skipped with that reason; one preceded
by ``<!-- doctest: slow -->`` runs only under ``-m slow``; one that uses ``data/`` is skipped when
the shared data is absent. A second test checks every relative link and ``#anchor``.

Both check themselves on small broken pages (``test_runner_reports_*``, ``test_links_report_*``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RETINAFACE_SHARED", REPO.parent / "shared"))
# The files the docs tell users to download -> what stands in for them in ../shared/reference
# (its README: the trained ResNet-50 and yakhyo files cannot be fetched here; their stand-ins are
# made by the same projects' code, same names and shapes).
STAND_INS = {
    "mobilenetV1X0.25_pretrain.tar": "mobilenetV1X0.25_pretrain.tar",
    "mobilenet0.25_Final.pth": "mobilenet0.25_Final.pth",
    "Resnet50_Final.pth": "resnet50_random.pth",
    "retinaface_mv1_0.25.pth": "yakhyo/yakhyo_mobilenetv1_025_random.pth",
    "retinaface_mv1_0.50.pth": "yakhyo/yakhyo_mobilenetv1_050_random.pth",
    "retinaface_mv1.pth": "yakhyo/yakhyo_mobilenetv1_random.pth",
    "retinaface_mv2.pth": "yakhyo/yakhyo_mobilenetv2_random.pth",
    "retinaface_r18.pth": "yakhyo/yakhyo_resnet18_random.pth",
}
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PAGE_TIMEOUT_S = 1800

FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*doctest:\s*(skip|slow)\b\s*(?:\((.*)\))?\s*-->\s*$")
RUNNABLE = ("python", "bash")


@dataclasses.dataclass(frozen=True)
class Block:
    page: str           # path relative to the repository (or the fixture's name)
    line: int           # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None    # the reason, for <!-- doctest: skip (reason) -->
    slow: bool

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}-{self.lang}"

    @property
    def uses_data(self) -> bool:
        return re.search(r"(?<![\w/.])data/", self.code) is not None


def parse_blocks(text: str, page: str) -> list[Block]:
    """The fenced python / bash blocks of a Markdown page, with their doctest markers (the
    closest non-blank line above the fence)."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        if j >= len(lines):
            raise ValueError(f"{page}:{start + 1}: code block never closed")
        if lang in RUNNABLE:
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = MARKER.match(lines[k].strip()) if k >= 0 else None
            skip = slow = None
            if marker and marker.group(1) == "skip":
                skip = (marker.group(2) or "").strip()
                if not skip:
                    raise ValueError(f"{page}:{k + 1}: '<!-- doctest: skip -->' needs a reason in parentheses")
            slow = bool(marker and marker.group(1) == "slow")
            blocks.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n", skip, slow))
        i = j + 1
    return blocks


# The driver runs in the page's folder: python blocks in one namespace, bash blocks as
# subprocesses; it records each block's outcome in a JSON file as it goes and stops at the first
# failure.
DRIVER = textwrap.dedent(r'''
    import json, os, subprocess, sys, traceback
    blocks, results_path = json.load(open(sys.argv[1])), sys.argv[2]
    results, namespace = {}, {"__name__": "__main__"}
    def save():
        with open(results_path, "w") as f:
            json.dump(results, f)
    failed = None
    for b in blocks:
        if failed:
            results[b["id"]] = "not run: " + failed + " failed first"
            continue
        print(f"===== {b['id']}", flush=True)
        try:
            if b["lang"] == "python":
                try:
                    exec(compile(b["code"], b["id"], "exec"), namespace)
                except SystemExit as exc:
                    if exc.code not in (None, 0):
                        raise
                results[b["id"]] = "passed"
            else:
                rc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", b["code"]]).returncode
                results[b["id"]] = "passed" if rc == 0 else f"failed: bash exited with {rc}"
        except BaseException:
            results[b["id"]] = "failed: " + traceback.format_exc(limit=4).strip().splitlines()[-1]
            traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        if results[b["id"]] != "passed":
            failed = b["id"]
        save()
    save()
''')


def prepare_folder(folder: Path, shared: Path | None = SHARED) -> dict[str, str]:
    """The files the docs call "your own" (photo.jpg, photos/, clip.mp4), data/ from the shared
    test data when present, and the environment: ``retinaface-tf`` / ``python`` running this
    checkout."""
    import cv2

    from retinaface_tf.fileio import bundled_image

    folder.mkdir(parents=True, exist_ok=True)
    photo = cv2.imread(str(bundled_image()))
    shutil.copyfile(bundled_image(), folder / "photo.jpg")
    (folder / "photos").mkdir(exist_ok=True)
    shutil.copyfile(bundled_image(), folder / "photos" / "photo.jpg")
    cv2.imwrite(str(folder / "photos" / "photo_mirrored.jpg"), photo[:, ::-1])
    small = cv2.resize(photo, (512, 312))
    writer = cv2.VideoWriter(str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (512, 312))
    for k in range(6):
        writer.write(small if k % 2 == 0 else small[:, ::-1].copy())
    writer.release()
    if shared is not None and (shared / "widerface").is_dir():
        (folder / "data" / "weights").mkdir(parents=True, exist_ok=True)
        os.symlink(shared / "widerface", folder / "data" / "widerface")
        for name, stand_in in STAND_INS.items():
            if (shared / "reference" / stand_in).exists():
                os.symlink(shared / "reference" / stand_in, folder / "data" / "weights" / name)
    bin_dir = folder.parent / (folder.name + "-bin")
    bin_dir.mkdir(exist_ok=True)
    for name, command in (("retinaface-tf", f'exec "{sys.executable}" -m retinaface_tf "$@"'),
                          ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the package's own default applies, as for a user
    return env


def run_blocks(blocks: list[Block], folder: Path, env: dict[str, str], timeout: float = PAGE_TIMEOUT_S):
    """Run ``blocks`` in order in ``folder``; returns ``({block id: outcome}, output)``."""
    spec, results = folder.parent / (folder.name + "-blocks.json"), folder.parent / (folder.name + "-results.json")
    driver = folder.parent / (folder.name + "-driver.py")
    spec.write_text(json.dumps([{"id": b.id, "lang": b.lang, "code": b.code} for b in blocks]))
    driver.write_text(DRIVER)
    try:
        proc = subprocess.run([sys.executable, str(driver), str(spec), str(results)], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        output = f"timed out after {timeout} s\n" + (exc.stdout or b"").decode(errors="replace")
    outcome = json.loads(results.read_text()) if results.exists() else {}
    for b in blocks:
        outcome.setdefault(b.id, "failed: the page's run stopped before this block (see output)")
    return outcome, output


def _page_blocks() -> list[Block]:
    return [b for page in PAGES for b in parse_blocks(page.read_text(), str(page.relative_to(REPO)))]


BLOCKS = _page_blocks()
_RUNS: dict[str, tuple[dict, str]] = {}


def _selected_slow(session, page: str) -> bool:
    return any(getattr(item, "callspec", None) is not None and item.callspec.params.get("block") is not None
               and item.callspec.params["block"].page == page and item.callspec.params["block"].slow
               for item in session.items)


def _page_run(request, tmp_path_factory, page: str):
    if page not in _RUNS:
        folder = tmp_path_factory.mktemp("doc-" + re.sub(r"\W", "_", page)) / "work"
        env = prepare_folder(folder)
        have_data = (folder / "data").exists()
        slow = _selected_slow(request.session, page)
        todo = [b for b in BLOCKS if b.page == page and b.skip is None and (slow or not b.slow)
                and (have_data or not b.uses_data)]
        _RUNS[page] = run_blocks(todo, folder, env)
    return _RUNS[page]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.slow else [])
                                   for b in BLOCKS])
def test_doc_block_runs_as_printed(block, request, tmp_path_factory):
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    if block.uses_data and not (SHARED / "widerface").is_dir():
        pytest.skip(f"{block.id}: uses data/ (WIDER FACE), not found at {SHARED} (set RETINAFACE_SHARED)")
    outcome, output = _page_run(request, tmp_path_factory, block.page)
    result = outcome[block.id]
    assert result == "passed", f"{block.id}: {result}\n--- block ---\n{block.code}--- output ---\n{output[-6000:]}"


def test_docs_have_runnable_blocks_and_few_skips():
    assert (REPO / "README.md").read_text().count("\n") <= 250, "the README is a landing page: at most 250 lines"
    runnable = [b for b in BLOCKS if b.skip is None]
    skipped = [b for b in BLOCKS if b.skip is not None]
    assert len(runnable) >= 20 and len(skipped) <= len(runnable) // 2, [b.id for b in skipped]


# ------------------------------------------------------------------------------------ links
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _outside_fences(text: str):
    """``(line number, line)`` of the lines outside fenced blocks."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.startswith(fence):
                fence = None
            continue
        yield n, line


def _strip_code(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` outside fenced blocks, inline code removed."""
    return [(n, re.sub(r"`[^`]*`", "", line)) for n, line in _outside_fences(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _outside_fences(path.read_text()):
        h = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if h:
            base = slug(h.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """Every relative link of ``page`` whose file or ``#anchor`` does not exist, as ``page:line:
    target: reason``."""
    problems = []
    for n, line in _strip_code(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                problems.append(f"{page.name}:{n}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                problems.append(f"{page.name}:{n}: {target}: no heading makes #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_and_anchors_resolve(page):
    assert broken_links(page) == []


def test_readme_and_ci_share_the_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1]
    assert command in readme, "the README's test command and .ci/run must be the same"
    assert "python3.11 -m venv .venv && .venv/bin/pip install . && .venv/bin/retinaface-tf detect" in readme


# --------------------------------------------------------------- the tests test themselves
BROKEN_PAGE = """\
# Title

```python
x = 40 + 2
```

<!-- doctest: skip (needs a GPU) -->
```bash
nvidia-smi
```

```python
assert x == 42
undefined_name
```

```bash
echo never
```
"""


def test_runner_reports_a_failing_block(tmp_path):
    blocks = parse_blocks(BROKEN_PAGE, "broken.md")
    assert [(b.line, b.lang, b.skip) for b in blocks] == [(3, "python", None), (8, "bash", "needs a GPU"),
                                                         (12, "python", None), (17, "bash", None)]
    runnable = [b for b in blocks if b.skip is None]
    folder = tmp_path / "work"
    folder.mkdir()
    outcome, output = run_blocks(runnable, folder, dict(os.environ), timeout=120)
    assert outcome["broken.md:3-python"] == "passed"  # and its x reached the next block
    assert outcome["broken.md:12-python"] == "failed: NameError: name 'undefined_name' is not defined"
    assert outcome["broken.md:17-bash"].startswith("not run: broken.md:12-python failed")
    assert "broken.md:12-python" in output


def test_runner_reports_a_failing_command(tmp_path):
    page = "```bash\ntrue\nfalse\necho after\n```\n\n<!-- doctest: slow -->\n```bash\nsleep 0\n```\n"
    blocks = parse_blocks(page, "cmd.md")
    assert [b.slow for b in blocks] == [False, True]
    folder = tmp_path / "work"
    folder.mkdir()
    outcome, output = run_blocks(blocks[:1], folder, dict(os.environ), timeout=60)
    assert outcome == {"cmd.md:1-bash": "failed: bash exited with 1"} and "after" not in output
    with pytest.raises(ValueError, match="needs a reason"):
        parse_blocks("<!-- doctest: skip -->\n```python\npass\n```\n", "x.md")
    with pytest.raises(ValueError, match="never closed"):
        parse_blocks("```python\npass\n", "x.md")


def test_links_report_missing_files_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading, with commas\n\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-code-heading-with-commas) [ok](#page) [web](https://example.com/x)\n"
                    "[gone](missing.md) [bad anchor](other.md#not-a-heading) `[in code](nowhere.md)`\n"
                    "[self](#nope)\n")
    assert broken_links(page) == ["page.md:4: missing.md: no such file",
                                  "page.md:4: other.md#not-a-heading: no heading makes #not-a-heading",
                                  "page.md:5: #nope: no heading makes #nope"]
    assert slug("The recipe, and why it is PyTorch's") == "the-recipe-and-why-it-is-pytorchs"
    assert slug("`detections.json`") == "detectionsjson"


def test_folder_has_the_files_the_docs_name(tmp_path):
    env = prepare_folder(tmp_path / "work", shared=None)
    import cv2

    assert cv2.imread(str(tmp_path / "work" / "photo.jpg")).shape == (624, 1024, 3)
    assert len(list((tmp_path / "work" / "photos").iterdir())) == 2
    cap = cv2.VideoCapture(str(tmp_path / "work" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    shim = subprocess.run(["retinaface-tf", "--version"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert shim.returncode == 0 and shim.stdout.startswith("retinaface-tf ")
