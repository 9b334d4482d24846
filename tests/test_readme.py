"""README facts users copy: the CPU-only torch install, and the demo table as `maskgen demo` labels it (issue 14)."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert match, title
    return match.group(1)


def test_install_says_how_to_get_the_cpu_build_of_torch():
    install = _section("Install")
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in install
    assert "CUDA" in install


def test_demo_table_uses_the_labels_the_demo_prints():
    from maskgen.demo.run import DemoSettings
    from maskgen.evaluate.sweep_plan import Variant

    quick = _section("Quick start")
    table = [line for line in quick.splitlines() if line.startswith("|")]
    settings = DemoSettings()
    labels = [Variant("maskgen", "image", 0.0, 0.0, 0).label,
              Variant("maskgen", "both", settings.mask_rate, 0.0, 0).label]
    assert [row.split("|")[1].strip() for row in table[2:]] == labels
    assert f"ERM = '{labels[0]}'; MaskGen = '{labels[1]}'" in quick
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:2] == ["method", "seeds"]  # as maskgen.evaluate.sweep_results heads it
    assert all(re.fullmatch(r"test: \w+", h) for h in header[2:])
