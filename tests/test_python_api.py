"""``docs/python-api.md``: its example, bringing a model of one's own through the Python API,
runs as it stands, on the accelerator's RTL, every logit exact."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def _python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)


@pytest.mark.slow
def test_python_api_example_runs(tmp_path):
    blocks = _python_blocks(DOC.read_text())
    assert len(blocks) == 1
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    done = subprocess.run([sys.executable, "-W", "error", str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    float_acc, int8_acc = map(float, re.fullmatch(r"float ([\d.]+)%, int8 ([\d.]+)%",
                                                  lines[0]).groups())
    assert float_acc > 85
    assert abs(float_acc - int8_acc) < 3
    # 8x8x(1*9)x8 + 4x4x(8*9)x16 + 64x10 MACs: two convolutions (the first with its max
    # pooling fused), the average pooling, the linear.
    assert lines[1] == "4 hardware layers, 23680 MACs an image"
    assert lines[2].startswith("4 images on fast, 8x8 array: 0 mismatching images (0 logits)")
    assert (tmp_path / "my-net.qnet").is_file()
