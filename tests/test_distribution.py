"""The product's wheel and image carry the product only: no simulation code, no simulation-only
dependency."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build_wheel(source: Path, out: Path) -> Path:
    """Build from a copy of what the distribution is made of: setuptools writes build/ and
    *.egg-info next to its sources, and the checkout must stay clean."""
    tree = out / "src-tree"
    tree.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        if (source / name).exists():
            shutil.copy(source / name, tree / name)
    shutil.copytree(source / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(tree)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = out.glob("*.whl")
    return wheel


def _metadata(wheel: zipfile.ZipFile) -> dict[str, list[str]]:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    message = Parser().parsestr(wheel.read(name).decode())
    return {"Requires-Dist": message.get_all("Requires-Dist") or []}


def test_product_wheel_has_no_simulation(tmp_path: Path) -> None:
    with zipfile.ZipFile(_build_wheel(ROOT, tmp_path / "product")) as wheel:
        names = wheel.namelist()
        requires = _metadata(wheel)["Requires-Dist"]
    assert any(n.startswith("azure_cni/operator/") for n in names), names[:20]
    assert not [n for n in names if "azure_cni_sim" in n or n.startswith("azure_cni/sim/")]
    # cryptography is what the simulation's CA needs; the product must not ask for it
    assert not [r for r in requires if r.lower().startswith("cryptography")], requires


def test_simulation_is_its_own_distribution(tmp_path: Path) -> None:
    with zipfile.ZipFile(_build_wheel(ROOT / "sim", tmp_path / "sim")) as wheel:
        names = wheel.namelist()
        requires = _metadata(wheel)["Requires-Dist"]
    assert any(n.startswith("azure_cni_sim/arm") for n in names), names[:20]
    assert not [n for n in names if n.startswith("azure_cni/")]
    assert any(r.startswith("azure-cni") for r in requires), requires


def test_the_image_copies_only_the_product() -> None:
    """The Containerfile installs from ``src`` (the product) and never copies ``sim``."""
    copies = [line.split()[1:] for line in (ROOT / "Containerfile").read_text().splitlines()
              if line.startswith("COPY ")]
    sources = {s for args in copies for s in args[:-1] if not s.startswith("--")}
    assert "src" in sources, copies
    assert not {s for s in sources if s == "." or s.startswith("sim")}, copies
