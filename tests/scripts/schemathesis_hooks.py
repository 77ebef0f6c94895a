"""Schemathesis hooks for the management API fuzz run (tests/tests/apifuzz.rs).

The fuzzer authenticates as a disposable administrator named by BERTH_FUZZ_ADMIN with
the password BERTH_FUZZ_PASSWORD. It learns user names from responses, so it would
sooner or later change that administrator's own password and lock itself out for the
rest of the run. A password change aimed at it still goes to the server, but with the
password it already has, so the endpoint is exercised and the credentials stay valid.
"""

import os

import schemathesis

ADMIN = os.environ["BERTH_FUZZ_ADMIN"]
PASSWORD = os.environ["BERTH_FUZZ_PASSWORD"]


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path != "/api/v1/users/{name}/password":
        return
    if (case.path_parameters or {}).get("name") != ADMIN:
        return
    if isinstance(case.body, dict) and "password" in case.body:
        case.body = dict(case.body, password=PASSWORD)
