"""`histosearch backbones` lists every preset with what a user needs to run it."""

import json
import subprocess
import sys

from indexer.cli import main
from model.presets import PRESETS


def test_backbones_lists_every_preset_with_its_sizes_and_weights_as_json(capsys):
    assert main(["backbones", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(PRESETS) | {"resnet18", "resnet34", "resnet50"} == set(listed)
    uni = listed["uni"]
    assert (uni["architecture"], uni["embedding_dim"], uni["input_size"]) == (
        "vit_large_patch16_224",
        1024,
        224,
    )
    assert uni["hub"] == "hf-hub:MahmoodLab/UNI" and "gated" in uni["licence"]
    assert listed["virchow2"]["embedding_dim"] == 2560
    assert listed["h-optimus-0"]["mean"] == [0.707223, 0.578729, 0.703617]
    assert listed["h-optimus-0"]["dynamic_input_size"] is False
    assert listed["phikon-v2"]["hub"] is None and "transformers" in listed["phikon-v2"]["note"]


def test_backbones_prints_a_table_through_the_console_script():
    console_script = "from indexer.cli import main; raise SystemExit(main())"
    result = subprocess.run(
        [sys.executable, "-c", console_script, "backbones"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for name in PRESETS:
        assert f"\n{name} " in result.stdout
    assert "licence: CC-BY-NC-ND-4.0, gated" in result.stdout
    assert "timm:<model_name>" in result.stdout
