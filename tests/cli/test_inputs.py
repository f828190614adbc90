"""From the command's inputs to jobs (ldrps_pipeline/cli/inputs.py): files, folders, globs, the suffix rule,
outputs of earlier runs, and outputs that would escape OUTPUT_DIR."""

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ldrps_pipeline.cli.inputs import check_writable_folder, find_inputs, plan_jobs


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def jobs_of(arguments, output_dir, recursive=False, extension="png", suffix=None):
    inputs = find_inputs(arguments, recursive=recursive, output_dir=output_dir)
    jobs, used_suffix = plan_jobs(inputs, output_dir, extension=extension, suffix=suffix)
    root = output_dir.parent.resolve()
    return {
        str(job.source.resolve().relative_to(root)): str(job.target.relative_to(output_dir)) for job in jobs
    }, used_suffix


def test_folders_mirror_sub_folders_only_with_recursive_and_keep_image_files_only(tmp_path):
    for name in ("photos/a.jpg", "photos/B.PNG", "photos/sub/c.tif", "photos/notes.txt", "photos/.hidden.png"):
        touch(tmp_path / name)
    touch(tmp_path / "photos" / ".cache" / "d.png")
    out = tmp_path / "out"
    assert jobs_of([tmp_path / "photos"], out) == ({"photos/B.PNG": "B.png", "photos/a.jpg": "a.png"}, "")
    jobs, _ = jobs_of([tmp_path / "photos"], out, recursive=True, extension="webp", suffix="-x")
    assert jobs == {"photos/B.PNG": "B-x.webp", "photos/a.jpg": "a-x.webp", "photos/sub/c.tif": "sub/c-x.webp"}


def test_globs_mirror_what_lies_below_their_first_wildcard(tmp_path, monkeypatch):
    for name in ("photos/2024/a.jpg", "photos/2025/b.jpg", "photos/2025/c.png"):
        touch(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    jobs, _ = jobs_of(["photos/**/*.jpg"], tmp_path / "out")
    assert jobs == {"photos/2024/a.jpg": "2024/a.png", "photos/2025/b.jpg": "2025/b.png"}
    with pytest.raises(
        ValueError, match=r"input files not found: nothing/\*.jpg \(a glob that matches nothing\), gone.png"
    ):
        find_inputs(["nothing/*.jpg", "gone.png"], recursive=False, output_dir=tmp_path / "out")


def test_output_folder_equal_to_the_input_folder_takes_a_suffix_and_skips_its_own_outputs(tmp_path):
    photos = tmp_path / "photos"
    for name in ("a.png", "b.jpg", "sub/c.png"):
        touch(photos / name)
    jobs, suffix = jobs_of([photos], photos, recursive=True)
    assert suffix == "_restored"
    assert set(jobs.values()) == {"a_restored.png", "b_restored.png", "sub/c_restored.png"}
    # The outputs of that run are not inputs of the next one.
    for target in jobs.values():
        touch(photos / target)
    assert jobs_of([photos], photos, recursive=True)[0] == jobs


def test_an_output_folder_inside_the_scanned_folder_is_not_scanned(tmp_path):
    photos = tmp_path / "photos"
    touch(photos / "a.png")
    touch(photos / "restored" / "a.png")  # an earlier run's output
    jobs, suffix = jobs_of([photos], photos / "restored", recursive=True)
    assert (suffix, list(jobs.values())) == ("", ["a.png"])


def test_conflicts_are_refused(tmp_path):
    a = touch(tmp_path / "a.png")
    touch(tmp_path / "x" / "a.jpg")
    with pytest.raises(ValueError, match="would both be written to"):
        jobs_of([a, tmp_path / "x" / "a.jpg"], tmp_path / "out")
    with pytest.raises(ValueError, match="is an input file; choose another --suffix"):
        jobs_of([a], tmp_path, suffix="")
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    with pytest.raises(ValueError, match="is a folder"):
        jobs_of([a], tmp_path / "out")


def test_outputs_cannot_escape_the_output_folder_through_symlinks(tmp_path):
    photos = tmp_path / "photos"
    touch(photos / "sub" / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValueError, match="would be written outside"):
        jobs_of([photos], out, recursive=True)
    (out / "sub").unlink()
    (out / "sub").mkdir()
    (out / "sub" / "a.png").symlink_to(elsewhere / "target.png")
    with pytest.raises(ValueError, match="is a symlink"):
        jobs_of([photos], out, recursive=True)
    # A symlinked input folder is listed, not followed (no loops, nothing outside the tree).
    (photos / "loop").symlink_to(photos, target_is_directory=True)
    (out / "sub" / "a.png").unlink()
    assert list(jobs_of([photos], out, recursive=True)[0].values()) == ["sub/a.png"]


@settings(max_examples=50, deadline=None)
@given(parts=st.lists(st.sampled_from(["..", ".", "a", "b", "*", "**"]), min_size=1, max_size=5))
def test_no_glob_puts_an_output_outside_the_output_folder(tmp_path_factory, parts):
    root = tmp_path_factory.mktemp("glob")
    for name in ("in/a/x.png", "in/b/y.png", "in/z.png", "other/w.png"):
        touch(root / name)
    out = root / "in" / "out"
    pattern = os.path.join(str(root / "in"), *parts, "*.png")
    try:
        inputs = find_inputs([pattern], recursive=True, output_dir=out)
        jobs, _ = plan_jobs(inputs, out, extension="png", suffix=None)
    except ValueError:
        return
    for job in jobs:
        assert job.target.resolve().is_relative_to(out.resolve())


def test_the_output_folder_must_be_creatable_and_writable(tmp_path):
    check_writable_folder(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_writable_folder(tmp_path / "file" / "out")
    with pytest.raises(ValueError, match="cannot be written"):
        check_writable_folder(Path("/proc/ldrps-out"))  # not writable, even for root
