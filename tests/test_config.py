import os
import platform
import subprocess
import sys
import tomllib

import pytest

from pipeline.config import Config, load_config, render_toml
from pipeline.errors import CrowdsegError
from pipeline.schemas import SCHEMA_DIR, schema_texts


def test_defaults_render_to_toml_that_loads_back_equal(tmp_path):
    text = render_toml(Config())
    assert "# share of photos per split" in text
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert load_config(path).model_dump() == Config().model_dump()
    assert tomllib.loads(text)["split"]["ratios"] == {"train": 0.7, "val": 0.1, "test": 0.2}


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.toml"
    path.write_text('[inputs]\nphotos = "m.csv"\n')
    assert load_config(path).path(load_config(path).inputs.photos) == tmp_path / "sub" / "m.csv"


@pytest.mark.parametrize("body,key", [
    ("[merge]\nmin_annotators = 0\n", "merge.min_annotators"),
    ("[split]\nratios = {train = 0.5, test = 0.2}\n", "split.ratios"),
    ("[dedup]\nphash_max_distence = 3\n", "dedup.phash_max_distence"),
    ("[merge]\nquorum = {teeth = 1.5}\n", "merge.quorum"),
    ("[ingest]\nmin_side = 'big'\n", "ingest.min_side"),
])
def test_validation_errors_name_the_file_and_key(tmp_path, body, key):
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(CrowdsegError) as e:
        load_config(path)
    assert e.value.line().startswith(f"{path}: {key}:")


def test_invalid_toml_is_one_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[merge\n")
    with pytest.raises(CrowdsegError, match="invalid TOML"):
        load_config(path)


def test_overrides_apply_over_the_file(tmp_path):
    assert load_config(None, {"output.out": "/x"}).output.out == "/x"


def test_schemas_are_in_sync_with_the_models():
    for name, text in schema_texts().items():
        assert (SCHEMA_DIR / name).read_text() == text, f"{name} drifted: run `make schemas`"


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from pipeline.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd)


def test_cli_prints_defaults_and_reports_user_errors_in_one_line(tmp_path):
    out = _cli("config", "--defaults")
    assert out.returncode == 0 and "[merge]" in out.stdout
    bad = tmp_path / "c.toml"
    bad.write_text("[split]\nseed = 3\n")
    out = _cli("config", "--check", str(bad))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"crowdseg: error: {bad}: split.seed: Input should be a valid string"]
    assert "Traceback" not in out.stderr


def test_a_build_with_a_missing_input_says_so_in_one_line(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text(f'[inputs]\nphotos = "{tmp_path}/none.csv"\nannotations = "{tmp_path}/none.jsonl"\n')
    out = _cli("build", "--config", str(bad), "--out", str(tmp_path / "out"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"crowdseg: error: {tmp_path}/none.csv: cannot read: No such file or "
                                               "directory"]


@pytest.mark.parametrize("raised,status,says", [
    (CrowdsegError("bad value", file="c.toml", where=3), 1, "crowdseg: error: c.toml:3: bad value"),
    (RuntimeError("an invariant broke"), 2, "internal error: this is a bug in crowdseg"),
])
def test_exit_status_is_1_for_user_errors_and_2_for_internal_ones(monkeypatch, capsys, raised, status, says):
    from pipeline import cli

    def fail(**_: object) -> None:
        raise raised

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == status and says in err
    assert ("Traceback" in err) == (status == 2)  # a user error is one line, an internal one shows its traceback


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator settings are glibc's")
def test_the_command_hands_its_allocator_settings_to_its_workers_unless_the_user_set_them():
    from pipeline.tuning import MALLOC_LIMIT

    probe = ("import os; from pipeline.tuning import tune_malloc; tune_malloc(); "
             "print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def settings(**extra: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**env, **extra},
                              check=True).stdout.split()

    assert settings() == [str(MALLOC_LIMIT)] * 2
    assert settings(MALLOC_TRIM_THRESHOLD_="1") == ["None", "1"]


def test_the_embedded_server_is_named_in_the_environment_for_every_thread_and_worker(tmp_path):
    """Prefect clients in threads and worker processes read PREFECT_API_URL; without it each would start a
    temporary server of its own."""
    probe = ("import os; from pipeline.run import prefect_server, start_prefect_server; start_prefect_server(); "
             "named = os.environ['PREFECT_API_URL']; print(named == prefect_server(), named.startswith('http'))")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_the_command_collects_young_garbage_less_often_but_never_turns_collection_on_or_up():
    import gc

    from pipeline.tuning import GC_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD, 10, 10)
        gc.set_threshold(10 * GC_THRESHOLD, 5, 5)
        tune_gc()
        assert gc.get_threshold() == (10 * GC_THRESHOLD, 5, 5)
        gc.set_threshold(0)
        tune_gc()
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)
