"""The release id of the app's sources (stackdemo_app): every source change shows, nothing else."""

import sys
from pathlib import Path

ROLE = Path(__file__).resolve().parents[2] / "roles" / "stackdemo_app"
sys.path.insert(0, str(ROLE / "filter_plugins"))
from release_filters import stackdemo_release_id  # noqa: E402

RUNTIME = "/ctl/roles/stackdemo_app/../../files/stackdemo"
PROJECT = "/src/myproj"


def found(**checksums):
    return [{"path": path, "checksum": checksum} for path, checksum in checksums.items()]


def files(**overrides):
    base = {
        "/ctl/files/stackdemo/src/stackdemo/config.py": "a1",
        "/ctl/files/stackdemo/src/stackdemo/worker.py": "b2",
        "/ctl/files/stackdemo/pyproject.toml": "c3",
        "/src/myproj/pyproject.toml": "d4",
        "/src/myproj/src/myproj/tasks.py": "e5",
    }
    base.update(overrides)
    return [{"path": path, "checksum": checksum} for path, checksum in base.items()]


def release(listing, project=PROJECT):
    return stackdemo_release_id(listing, RUNTIME, project)


def test_a_change_to_any_source_file_changes_the_release():
    before = release(files())
    for path in (
        "/ctl/files/stackdemo/src/stackdemo/config.py",
        "/ctl/files/stackdemo/src/stackdemo/worker.py",
        "/ctl/files/stackdemo/pyproject.toml",
        "/src/myproj/src/myproj/tasks.py",
        "/src/myproj/pyproject.toml",
    ):
        assert release(files(**{path: "changed"})) != before, path


def test_build_output_and_the_runtime_tests_do_not_count():
    before = release(files())
    for path in (
        "/ctl/files/stackdemo/build/lib/stackdemo/config.py",
        "/ctl/files/stackdemo/tests/test_config.py",
        "/src/myproj/build/lib/myproj/tasks.py",
        "/src/myproj/.venv/lib/site.py",
        "/src/myproj/dist/x.py",
    ):
        assert release([*files(), *found(**{path: "noise"})]) == before, path


def test_the_demo_alone_and_with_a_project_differ():
    demo = [item for item in files() if not item["path"].startswith(PROJECT)]
    assert release(demo, "") != release(files())
    assert len(release(demo, "")) == 12
