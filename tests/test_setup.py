"""The environment setup: setup.sh, law.cfg, and the pins pyproject.toml and environment.yml share.

setup.sh is sourced in shells started with an almost empty environment, as a new login would
be. The first sourcing in a clone creates .venv and installs every dependency (minutes); CI
sources setup.sh before running pytest, so there it is quick.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FIRST_SETUP_TIMEOUT_S = 3600
# setup.sh promises a re-sourcing of about 3 s at most; the margin is for a busy machine
RESOURCE_LIMIT_S = 5.0
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

# conda-forge names of the packages whose PyPI name differs there
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base"}


def clean_environment(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: HOME, a system PATH, and the active conda env if any.

    A conda environment the tests run in is passed on, because setup.sh is meant to use it
    rather than build a .venv beside it.
    """
    env = {"HOME": os.environ.get("HOME", "/"), "PATH": SYSTEM_PATH}
    conda_prefix = os.environ.get("CONDA_PREFIX")
    conda_name = os.environ.get("CONDA_DEFAULT_ENV", "base")
    if conda_prefix and conda_name != "base":
        env.update(
            CONDA_PREFIX=conda_prefix,
            CONDA_DEFAULT_ENV=conda_name,
            PATH=f"{conda_prefix}/bin:{SYSTEM_PATH}",
        )
    else:
        # the Python running these tests can create .venv where the system has no python3
        env["PATH"] += os.pathsep + str(Path(sys.base_prefix) / "bin")
    env.update(extra)
    return env


def source_setup(
    shell: str,
    commands: str,
    *,
    before: str = "",
    env: dict[str, str] | None = None,
    interactive: bool = False,
    timeout: float = FIRST_SETUP_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run ``before; source setup.sh && commands`` in a new bash or zsh at the repository root."""
    argv = [shell, "-f"] if shell == "zsh" else [shell, "--norc", "--noprofile"]
    if interactive:
        argv.append("-i")
    argv += ["-c", f"{before}\nsource setup.sh && {commands}"]
    return subprocess.run(
        argv,
        cwd=REPO,
        env=env if env is not None else clean_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def parse_env_output(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def needs_zsh() -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed")


@pytest.fixture(scope="module")
def environment_ready() -> None:
    """Source setup.sh once, so that the tests after it measure a set-up clone."""
    result = source_setup("bash", "true")
    assert result.returncode == 0, f"sourcing setup.sh failed\n{describe(result)}"


def assert_default_environment(env: dict[str, str]) -> None:
    """The variables setup.sh exports when the caller set none of them."""
    assert env["BHIVE_REPO"] == str(REPO)
    assert env["BHIVE_STORE"] == str(REPO / "store")
    assert env["LAW_HOME"] == str(REPO / ".law")
    assert env["LAW_CONFIG_FILE"] == str(REPO / "law.cfg")


def test_setup_exports_paths_and_installs_the_packages(environment_ready: None) -> None:
    result = source_setup(
        "bash", "env && python -c 'import bhive, tasks, models, dataloaders, processors'"
    )
    assert result.returncode == 0, describe(result)
    assert_default_environment(parse_env_output(result.stdout))
    assert f"b-hive: store {REPO / 'store'}" in result.stdout


def test_store_exported_beforehand_is_kept(environment_ready: None, tmp_path: Path) -> None:
    own_store = tmp_path / "elsewhere"
    result = source_setup("bash", "env", env=clean_environment(BHIVE_STORE=str(own_store)))
    assert result.returncode == 0, describe(result)
    assert parse_env_output(result.stdout)["BHIVE_STORE"] == str(own_store)


def test_sourcing_again_installs_nothing_and_is_quick(environment_ready: None) -> None:
    result = source_setup("bash", "python -c 'import sys; print(sys.prefix)'")
    assert result.returncode == 0, describe(result)
    prefix = Path(result.stdout.splitlines()[-1])
    stamp = prefix / ".bhive-install-stamp"
    log = prefix / ".bhive-install.log"
    pyproject_sha256 = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    assert stamp.read_text().split() == [pyproject_sha256, str(REPO)]
    stamp_before = stamp.read_text()
    log_before = log.stat().st_mtime_ns

    start = time.perf_counter()
    again = source_setup("bash", "true")
    elapsed = time.perf_counter() - start

    assert again.returncode == 0, describe(again)
    assert "installing" not in again.stdout
    assert stamp.read_text() == stamp_before
    assert log.stat().st_mtime_ns == log_before, "pip ran again although pyproject.toml is unchanged"
    assert elapsed < RESOURCE_LIMIT_S, f"sourcing setup.sh again took {elapsed:.1f} s"


def test_caller_shell_options_are_kept(environment_ready: None) -> None:
    nounset_only = source_setup("bash", 'echo "options=$-"', before="set -u")
    assert nounset_only.returncode == 0, describe(nounset_only)
    options = nounset_only.stdout.rsplit("options=", 1)[1]
    assert "u" in options and "e" not in options

    strict = source_setup("bash", 'echo "options=$-"', before="set -eu")
    assert strict.returncode == 0, describe(strict)
    options = strict.stdout.rsplit("options=", 1)[1]
    assert "u" in options and "e" in options


def test_zsh_gets_the_same_environment(environment_ready: None) -> None:
    needs_zsh()
    result = source_setup(
        "zsh",
        "env && python -c 'import bhive, tasks, models, dataloaders, processors'",
        before="set -u",
    )
    assert result.returncode == 0, describe(result)
    assert_default_environment(parse_env_output(result.stdout))


def test_law_completion_is_enabled_in_interactive_shells(environment_ready: None) -> None:
    bash = source_setup("bash", "complete -p law", interactive=True)
    assert bash.returncode == 0, describe(bash)
    assert "_law_complete" in bash.stdout

    if shutil.which("zsh") is not None:
        zsh = source_setup("zsh", "print -r -- ${_comps[law]}", interactive=True)
        assert zsh.returncode == 0, describe(zsh)
        assert "_law_complete" in zsh.stdout


def test_executing_setup_sh_is_refused() -> None:
    result = subprocess.run(
        ["bash", "setup.sh"], cwd=REPO, env=clean_environment(), capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "must be sourced" in result.stderr


def test_failed_installation_is_reported_and_not_stamped(tmp_path: Path) -> None:
    # an environment without pip makes `pip install` fail at once
    broken = tmp_path / "broken-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(broken)], check=True)
    env = clean_environment(CONDA_PREFIX=str(broken), CONDA_DEFAULT_ENV="broken-env")
    env["PATH"] = f"{broken}/bin:{SYSTEM_PATH}"

    result = source_setup("bash", "echo unreachable", env=env, timeout=120)

    assert result.returncode == 1, describe(result)
    assert "unreachable" not in result.stdout
    assert "installation failed" in result.stderr
    assert str(broken / ".bhive-install.log") in result.stderr
    assert not (broken / ".bhive-install-stamp").exists()


def test_law_index_lists_simulated_samples_task(environment_ready: None) -> None:
    result = source_setup("bash", "law index --verbose")
    assert result.returncode == 0, describe(result)
    assert "SimulatedSamplesTask" in result.stdout
    assert ":SimulatedSamplesTask:" in (REPO / ".law" / "index").read_text()


def test_law_cfg_runs_luigi_with_the_local_scheduler(tmp_path: Path) -> None:
    cfg = configparser.ConfigParser(allow_no_value=True)
    cfg.read(REPO / "law.cfg")
    assert cfg.getboolean("luigi_core", "local_scheduler")
    assert not cfg.has_option("core", "local_scheduler"), "luigi reads [core] as a remote setup"
    assert "tasks.simulation" in cfg["modules"]

    # what luigi itself ends up with once law has loaded the file
    probe = (
        "import law, luigi.interface, luigi.retcodes;"
        "law.config.Config.instance();"
        "print(luigi.interface.core().local_scheduler, luigi.retcodes.retcode().task_failed)"
    )
    env = dict(os.environ, LAW_CONFIG_FILE=str(REPO / "law.cfg"), LAW_HOME=str(tmp_path / "law"))
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    local_scheduler, task_failed_code = result.stdout.split()
    assert local_scheduler == "True"
    assert int(task_failed_code) != 0, "a failed task must make `law run` exit non-zero"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject_pins() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+)\s*", requirement)
        assert match, f"pyproject.toml: {requirement!r} is not pinned with '=='"
        pins[normalized(match[1])] = match[2]
    return pins


def environment_yml_pins() -> tuple[dict[str, str], dict[str, str]]:
    """Versions by package name from environment.yml, and the build strings asked for."""
    spec = yaml.safe_load((REPO / "environment.yml").read_text())
    assert spec["channels"] == ["conda-forge"]
    versions, builds = {}, {}
    for entry in spec["dependencies"]:
        if isinstance(entry, dict):
            for requirement in entry["pip"]:
                name, version = requirement.split("==")
                versions[normalized(name)] = version
            continue
        name, _, rest = entry.partition("=")
        version, _, build = rest.partition("=")
        versions[normalized(name)] = version
        builds[normalized(name)] = build
    return versions, builds


def test_environment_yml_pins_what_pyproject_pins() -> None:
    versions, builds = environment_yml_pins()
    for name, version in pyproject_pins().items():
        conda_name = CONDA_NAME.get(name, name)
        assert conda_name in versions, f"environment.yml lacks {conda_name} (pyproject.toml: {name}=={version})"
        assert versions[conda_name] == version, (
            f"environment.yml pins {conda_name} {versions[conda_name]}, pyproject.toml {version}"
        )
    assert "cuda" in builds["pytorch"], "environment.yml must ask for the CUDA build of pytorch"
    assert versions["python"] == "3.11"
