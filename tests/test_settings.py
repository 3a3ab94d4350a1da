"""One precedence for every setting (flag > environment > spec > default), spec mistakes with "did you mean",
and `fail_when`, the spec's rule for when a run counts as failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptgrid.errors import InvalidInput
from promptgrid.settings import environment_overrides
from promptgrid.spec.load import load_spec_text
from promptgrid.spec.overrides import describe_settings
from promptgrid.spec.verdict import FailWhen

SPEC = "model: stable-diffusion-3-5-large\nprompts: p.csv\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "p.csv").write_text("prompt\na cat\n", encoding="utf-8")
    return tmp_path


def load(folder: Path, text: str = SPEC, flags=None, environ=None):
    environment = environment_overrides(environ or {})
    return load_spec_text(text, folder, "s.yaml", overrides=flags, environment=environment)


def test_each_setting_takes_the_first_of_flag_environment_spec_default(folder):
    text = SPEC + "api: {base_url: http://spec.example, rate_limit: 30/60s}\noutput: out/spec\n"
    environ = {"EACHLABS_API_BASE": "http://env.example", "PROMPTGRID_RATE_LIMIT": "20/60s"}

    spec = load(folder, text, flags={"api.rate_limit": "10/60s"}, environ=environ)

    assert spec.api.rate_limit.requests == 10  # flag over environment
    assert spec.api.base_url == "http://env.example"  # environment over spec
    assert spec.output == "out/spec"  # spec over default
    assert spec.api.max_concurrent == 10  # the default
    assert spec.setting_origins == {
        "output": "spec",
        "api.base_url": "EACHLABS_API_BASE",
        "api.rate_limit": "--rate-limit",
        "api.max_concurrent": "default",
        "api.polls_count": "default",
        "api.quota_url": "default",
        "max_jobs": "default",
    }


def test_the_environment_alone_points_a_spec_without_a_base_url_elsewhere(folder):
    spec = load(folder, environ={"EACHLABS_API_BASE": "http://127.0.0.1:8787/"})
    assert spec.api.base_url == "http://127.0.0.1:8787"
    shown = describe_settings(spec)
    assert "flag > environment > spec > default" in shown
    assert "http://127.0.0.1:8787  (EACHLABS_API_BASE)" in shown


def test_the_printed_settings_never_show_the_key_or_a_redis_password(folder, monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", "sk-never-printed-91")
    spec = load(folder, environ={"PROMPTGRID_QUOTA_URL": "redis://user:hunter2@redis.example:6379/0"})
    shown = describe_settings(spec)
    assert "sk-never-printed-91" not in shown and "hunter2" not in shown
    assert "PROMPTGRID_QUOTA_URL" in shown and "EACHLABS_API_KEY (set, never shown)" in shown


def test_bad_environment_values_name_their_variable():
    with pytest.raises(InvalidInput) as caught:
        environment_overrides({"PROMPTGRID_MAX_CONCURRENT": "ten", "PROMPTGRID_POLLS_COUNT": "maybe"})
    problems = caught.value.describe()
    assert "PROMPTGRID_MAX_CONCURRENT: 'ten' is not a whole number" in problems
    assert "PROMPTGRID_POLLS_COUNT: 'maybe' is not a boolean" in problems


def test_an_invalid_value_from_the_environment_says_it_came_from_there(folder):
    with pytest.raises(InvalidInput) as caught:
        load(folder, environ={"PROMPTGRID_RATE_LIMIT": "sixty"})
    assert "api.rate_limit (from PROMPTGRID_RATE_LIMIT)" in caught.value.describe()


def test_every_misspelt_key_is_reported_at_once_with_the_nearest_known_key(folder):
    text = SPEC + "sweeps: {cfg: [1]}\noutptu: out/x\napi: {rate_limt: 60/60s, max_concurent: 3}\nzzz: 1\n"
    with pytest.raises(InvalidInput) as caught:
        load(folder, text)
    problems = caught.value.describe()
    assert "sweeps: unknown key 'sweeps'; did you mean 'sweep'?" in problems
    assert "outptu: unknown key 'outptu'; did you mean 'output'?" in problems
    assert "api.rate_limt: unknown key 'rate_limt'; did you mean 'rate_limit'?" in problems
    assert "api.max_concurent: unknown key 'max_concurent'; did you mean 'max_concurrent'?" in problems
    assert "zzz: unknown key 'zzz'; expected one of name, model" in problems
    assert caught.value.total == 5


@pytest.mark.parametrize(
    ("written", "failed", "total", "fails"),
    [
        ("any", 1, 100, True),
        ("any", 0, 100, False),
        ("ratio > 0.05", 5, 100, False),
        ("ratio > 0.05", 6, 100, True),
        ("never", 100, 100, False),
    ],
)
def test_fail_when_judges_the_share_of_failed_jobs(written, failed, total, fails):
    assert FailWhen.parse(written).fails(failed, total) is fails


def test_fail_when_is_read_from_the_spec_and_a_bad_one_is_named(folder):
    assert str(load(folder, SPEC + "fail_when: ratio > 0.1\n").fail_when) == "ratio > 0.1"
    assert str(load(folder).fail_when) == "any"
    with pytest.raises(InvalidInput) as caught:
        load(folder, SPEC + "fail_when: sometimes\n")
    assert "fail_when: 'sometimes' is not a failure threshold" in caught.value.describe()


def test_fail_when_does_not_change_the_spec_hash(folder):
    assert load(folder).spec_hash == load(folder, SPEC + "fail_when: never\n").spec_hash


def test_a_missing_key_is_explained_for_the_api_in_force():
    from promptgrid.settings import ApiSettings, require_api_key

    with pytest.raises(InvalidInput, match="EACHLABS_API_KEY is not set.*or pass --sandbox"):
        require_api_key(ApiSettings("https://api.eachlabs.ai", None))
    # EACHLABS_API_BASE already names a sandbox (or another local API): --sandbox is not the advice.
    with pytest.raises(InvalidInput, match="EACHLABS_API_KEY is not set") as local:
        require_api_key(ApiSettings("http://127.0.0.1:8787", None), "sandbox=True")
    assert "sandbox=True" not in str(local.value) and "any non-empty key" in str(local.value)
