"""The release id of the app's sources: pure Python, so tests/unit checks the code the role runs."""

import hashlib
import os.path
import re

# What a build leaves in a source tree is not source: build/, dist/, dot directories (.venv, .git).
_BUILD_OUTPUT = re.compile(r"/(build|dist|\.[^/]*)/")


def stackdemo_release_id(found_files, runtime_source, project_source=""):
    """12 hex digits naming the stack's runtime and the user's project as they are now.

    found_files: ansible.builtin.find results (path, checksum) under both sources. Of the runtime,
    its package and pyproject.toml count; of the project, every file found outside build output.
    Any change to a counted file changes the id; nothing else does.
    """
    runtime = os.path.normpath(runtime_source) + "/"
    project = os.path.normpath(project_source) + "/" if project_source else None
    runtime_sums, project_sums = [], []
    for found in found_files:
        path = os.path.normpath(found["path"])
        if path.startswith(runtime) and (
            path[len(runtime) :].startswith("src/stackdemo/") or path[len(runtime) :] == "pyproject.toml"
        ):
            runtime_sums.append(found["checksum"])
        elif project and path.startswith(project) and not _BUILD_OUTPUT.search(path[len(project) - 1 :]):
            project_sums.append(found["checksum"])
    text = ",".join(sorted(runtime_sums)) + ";" + ",".join(sorted(project_sums))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]


class FilterModule:
    def filters(self):
        return {"stackdemo_release_id": stackdemo_release_id}
