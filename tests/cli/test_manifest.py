"""The manifest (ldrps_pipeline/cli/manifest.py): JSON Lines written as the run goes, parts of several processes
merged into one."""

import json

import pytest

from ldrps_pipeline.cli.manifest import ManifestWriter, leftover_parts, merge_parts, part_path, read_records


def test_records_are_appended_one_line_each_and_read_back(tmp_path):
    manifest = tmp_path / "out" / "m.jsonl"
    writer = ManifestWriter(manifest)
    writer.write({"status": "done", "input": "a.png"})
    ManifestWriter(manifest).write({"status": "failed", "input": "b.png", "reason": "truncated"})  # a second run
    assert [json.loads(line)["input"] for line in manifest.read_text().splitlines()] == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="status must be one of"):
        writer.write({"status": "maybe"})
    with pytest.raises(ValueError):
        writer.write({"status": "done", "seconds": float("nan")})  # JSON has no NaN


def test_parts_are_merged_in_process_order_and_a_cut_last_line_is_dropped(tmp_path):
    manifest = tmp_path / "m.jsonl"
    ManifestWriter(manifest).write({"status": "skipped", "input": "old"})
    for index in (1, 0, 10):
        ManifestWriter(part_path(manifest, index)).write({"status": "done", "input": f"p{index}"})
    with open(part_path(manifest, 1), "a") as file:
        file.write('{"status": "do')  # a process killed mid-line
    parts = leftover_parts(manifest)
    assert [p.name for p in parts] == ["m.jsonl.part-0", "m.jsonl.part-1", "m.jsonl.part-10"]
    merge_parts(manifest, parts)
    assert [r["input"] for r in read_records(manifest)] == ["old", "p0", "p1", "p10"]
    assert leftover_parts(manifest) == []
