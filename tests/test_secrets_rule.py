"""The one rule for what is secret (fleet/spec/secrets.py), and the places that apply it
without a running fleet: the diff of two specs, the journal, the export split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import profile_spec
from fleet.plan.fielddiff import diff_specs
from fleet.spec.secrets import MASK, is_secret, mask_argv, mask_data, mask_text, secret_name, secret_value
from fleet.store.db import Store

PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----"
SECRET_VALUES = {
    "bearer": "Bearer abc.def-123456",
    "basic": "Basic dXNlcjpwYXNzd29yZA==",
    "slack webhook": "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
    "discord webhook": "https://discord.com/api/webhooks/123/abcDEF",
    "generic webhook path": "https://ci.example/webhook/abc123",
    "sentry dsn": "https://abc123def@o1.ingest.sentry.io/1",
    "url password": "postgres://app:pw@db:5432/app",
    "url query token": "https://api.example/v1?access_token=abc123",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "pem": PEM,
    "github": "ghp_abcdefghij0123456789",
    "github fine-grained": "github_pat_11ABCDEFG0123456789",
    "gitlab": "glpat-abcdefghij0123",
    "slack bot": "xoxb-1234-5678-abcdef",
    "slack app": "xoxa-2-abcdef123",
    "slack user": "xoxp-1234-abcdef",
    "openai": "sk-proj-abcdef123456",
    "stripe": "sk_live_abcdef123456",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "google": "AIzaSyA-abcdefghijklmnopqrstuvwxyz012",
    "telegram": "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
    "connection string": "host=db user=app password=pw dbname=x",
    "opaque": "a8f5f167f44f4964e6c998dee827110c8f5f167f",
}
PLAIN_VALUES = ["info", "/srv/hermes/profiles/alpha", "http://proxy.internal:3128", "127.0.0.1,localhost,::1",
                'hello world; 100% "quoted" $HOME \\ back', "Bot started in basic mode", "https://example.com/docs?page=2",
                "task-runner", "v1.2.3", "true", "Token refresh every 5m", "user@example.com",
                "ssh://git@github.com/org/repo.git", "http://user@proxy:3128"]  # a login name is no secret


@pytest.mark.parametrize("form", sorted(SECRET_VALUES))
def test_secret_by_value_whatever_the_name(form):
    value = SECRET_VALUES[form]
    assert secret_value(value) and is_secret("SETTING", value)
    if form != "opaque":  # free text is full of long words (hashes, ids): only the forms with a shape
        assert value not in mask_text(f"started with {value} in it")


@pytest.mark.parametrize("value", PLAIN_VALUES)
def test_ordinary_values_are_shown(value):
    assert not is_secret("SETTING", value)


def test_secret_by_name():
    for name in ("DB_PASSWD", "PGPASS", "SERVICE_ACCOUNT_CREDENTIAL", "SENTRY_DSN", "SLACK_WEBHOOK_URL", "AUTH",
                 "BASIC_AUTH", "HTTP_AUTHORIZATION", "api_token", "Keyring", "SESSION_COOKIE", "DB_PWD"):
        assert secret_name(name), name
    for name in ("AUTHOR", "PWD", "OLDPWD", "PATH", "HERMES_HOME", "LOG_LEVEL", "NO_PROXY"):
        assert not secret_name(name), name


def test_command_lines_are_masked_word_by_word():
    argv = ["bot", "--token", "abc", "--api-key=zz", "DB_PASSWD=x", "-p", "default", "https://u:p@h/x",
            "-X", "api_token=y", "--verbose", "run", "--keep-going", "now"]
    assert mask_argv(argv) == ["bot", "--token", MASK, f"--api-key={MASK}", f"DB_PASSWD={MASK}", "-p", "default", MASK,
                               "-X", f"api_token={MASK}", "--verbose", "run", "--keep-going", "now"]


def test_free_text_masks_assignments_flags_and_known_values():
    text = ("running the update command: pip install --password hunter2 DB_PASSWD=foo2bar and then "
            "printed my-db-secret-value; pid 42 exited 1 after 3.0s")
    masked = mask_text(text, known=["my-db-secret-value", "true"])
    assert "hunter2" not in masked and "foo2bar" not in masked and "my-db-secret-value" not in masked
    assert "pid 42 exited 1 after 3.0s" in masked and "update command" in masked
    assert mask_data({"output_tail": "token: abcdef", "API_KEY": "zz", "n": 3}) == {
        "output_tail": f"token: {MASK}", "API_KEY": MASK, "n": 3}


@pytest.mark.parametrize("text", [
    "failed: DB_PASSWD=foo2bar", "spawn failed: OSError: token=foo2bar", "a: b: c=API_KEY=foo2bar",
    "note: password: foo2bar", "exit: --token foo2bar", "cmd=--api-key=foo2bar",
])
def test_an_assignment_inside_a_harmless_value_is_masked_too(text):
    """A harmless `name: ` or `name=` in front must not hide the secret assignment that is its value."""
    assert "foo2bar" not in mask_text(text)


def spec_with(env: dict, command: tuple[str, ...]):
    return profile_spec("p", driver="process", env=env, command=command)


def test_a_rotated_secret_shows_no_value_and_a_command_keeps_its_other_words():
    before = spec_with({"ALERTS": "https://hooks.slack.com/services/T/B/old1", "GONE_TOKEN": "gone-value"},
                       ("/bin/gw", "--token", "old-cli-secret", "--mode", "a"))
    after = spec_with({"ALERTS": "https://hooks.slack.com/services/T/B/new2", "ADDED": "ghp_addedSecret123"},
                      ("/bin/gw", "--token", "new-cli-secret", "--mode", "b"))
    changes = {c.path: c for c in diff_specs(before, after)}
    assert changes["env.ALERTS"].sensitive and changes["env.ALERTS"].shown() is None
    assert changes["env.ALERTS"].change == "changed"
    assert changes["env.ADDED"].change == "added" and changes["env.ADDED"].shown() is None
    assert changes["env.GONE_TOKEN"].change == "removed" and changes["env.GONE_TOKEN"].shown() is None
    assert changes["command"].sensitive
    assert changes["command"].shown() == (["/bin/gw", "--token", MASK, "--mode", "a"],
                                          ["/bin/gw", "--token", MASK, "--mode", "b"])
    only_secret = diff_specs(spec_with({}, ("/bin/gw", "--token", "one")), spec_with({}, ("/bin/gw", "--token", "two")))
    assert [c.shown() for c in only_secret] == [None]  # masked words alone cannot tell the change apart


def test_the_journal_keeps_and_returns_no_secret(tmp_path):
    store = Store(str(tmp_path / "fleet.db"))
    try:
        store.journal("error", "spawn failed: git clone https://bot:pw-secret@git.example/x.git",
                      data={"cmd": "deploy --api-key key-secret-1", "PASSWORD": "pw2"})
        [entry] = store.events()
    finally:
        store.close()
    assert "pw-secret" not in entry.message and entry.message.startswith("spawn failed: ")
    assert entry.data == {"cmd": f"deploy --api-key {MASK}", "PASSWORD": MASK}


# -- the shortcut for texts no rule can change --------------------------------------------------------------

FRAGMENTS = ["generation 3 from sha256:0a1b", " by root@host ", "(apply)", "pid 4242 exited", " signal 9", "\n", ": ",
             "=", " ", "-", "--", "_", ".", "/", "@", ":", "'", '"', "gh", "p_", "ghp_abcdEFGH1234", "github_pat_x",
             "glpat-", "xoxb-123456", "sk-", "sk_live_abcdef12", "AKIA", "AIza", "hf_", "SG.", "eyJ", "eyJhbGciOi",
             ".eyJzdWIiOi", "Bearer ", "bearer", "Basic ", "Token ", "Bot ", "ApiKey ", "abcDEF12.x~y", "https://",
             "user:pass@host", "hooks.slack.com/services/T0", "-----BEGIN ", "PRIVATE KEY-----", "123456",
             "1234567:", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "token", "Password", "api_key", "auth", "PIN", "pw",
             "otp", "DB_PASSWD", "note", "a", "Z", "9", "é", "ß", "stopping", "author", "OAuth", "authn", "pin_",
             "_pw", "x", "1",
             # each form whole, so that a trigger missing from the shortcut shows at once
             "Basic abcDEF12.x~y", "Digest abcDEF12/x", "ApiKey 9f8e7d6c5b", "Bot 12345:abcDEFxyzJKL",
             "eyJhbGciOi.eyJzdWIiOi.sig", "1234567:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "https://u:p@example.org/x",
             "-----BEGIN RSA PRIVATE KEY-----abc-----END RSA PRIVATE KEY-----", "xapp-1-abcdef", "rk_test_abcdef12",
             "pypi-AgEIcHlwaS5vcmcCJGE4", "npm_abcdefghijklmnopqrstuv", "ASIAABCDEFGHIJKLMNOP", "--password hunter2"]


# One of each form the value rule knows, and nothing else that could hold a secret.
EACH_FORM = ["https://u:p@example.org/x", "eyJhbGciOi.eyJzdWIiOi.sig", "ghp_abcdEFGH1234", "github_pat_abcdEFGH12",
             "glpat-abcdEFGH12", "xoxb-123456", "xapp-1-abcdef", "sk-abcdef12", "sk_live_abcdef12", "rk_test_abcdef12",
             "AKIAABCDEFGHIJKLMNOP", "ASIAABCDEFGHIJKLMNOP", "AGPAABCDEFGHIJKLMNOP", "AIDAABCDEFGHIJKLMNOP",
             "AROAABCDEFGHIJKLMNOP", "AIza" + "A" * 20, "hf_abcdefXYZ12", "npm_" + "a" * 20, "pypi-" + "A" * 20,
             "SG.abcdefXYZ12.abcdefXYZ12", "Basic abcDEF12.x~y", "Digest abcDEF12/x", "Bot 12345:abcDEFxyzJKL",
             "Bearer abcDEF12.x~y", "Token abcDEF12.x~y", "ApiKey abcDEF12.x~y", "1234567:" + "A" * 34,
             "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "db_password=hunter2",
             "--api-key hunter2", "auth: hunter2", "PIN=1234", "PW: hunter2", "otp=123456", "ßpin=1234",
             "x.oauth.pw=hunter2", "--otp 123456", "AUTHORIZATION: hunter2"]


@pytest.mark.parametrize("form", EACH_FORM)
def test_no_form_of_a_secret_passes_the_shortcut(form):
    text = f"pid 4242 said {form} and left"
    assert MASK in mask_text(text), text


@pytest.mark.parametrize("text", ["alice: draining 100 profile(s), then stopping the controller",
                                  "stopped by the author (apply)", "spinning up pid 4242", "mapping: 3 profiles"])
def test_ordinary_words_holding_a_secret_word_take_the_shortcut(text):
    from fleet.spec.secrets import _may_hold_secret

    assert not _may_hold_secret(text)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join))
def test_a_text_the_shortcut_passes_by_is_one_no_rule_changes(text):
    from fleet.spec.secrets import _masked_by_patterns, _may_hold_secret

    assert mask_text(text) == _masked_by_patterns(text)
    if not _may_hold_secret(text):
        assert _masked_by_patterns(text) == text
