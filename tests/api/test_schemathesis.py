"""Fuzzing the running API from its own OpenAPI spec (schemathesis): valid and invalid requests
for every operation, as admin and as a tenant, and no request may get a server error (5xx). Bounded
(a few dozen examples per operation and mode) so it finishes well under two minutes."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20
#: Operations whose positive examples are expensive by design (the recommender sizes fleets over
#: the whole catalog); fewer examples, still no server error allowed.
EXPENSIVE = {"POST /api/recommendations"}


#: The generated cases of each API spec (its JSON text): operation label, mode, cases. Generating
#: is most of this test's time, and it depends on the spec alone (derandomized), not on the
#: database behind the API: the SQLite and PostgreSQL runs send the very same cases, drawn once.
_CASES: dict[str, list] = {}


def _generated_cases(spec_text: str, schema) -> list:
    if spec_text not in _CASES:
        drawn = []
        for op in (r.ok() for r in schema.get_all_operations()):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                n = 5 if op.label in EXPENSIVE else MAX_EXAMPLES
                cases: list = []

                @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(generation_mode=mode))
                def draw(case):
                    cases.append(case)

                try:
                    draw()
                except Unsatisfiable:  # no invalid input exists (an operation without parameters)
                    pass
                drawn.append((op.label, mode, cases))
        _CASES[spec_text] = drawn
    return _CASES[spec_text]


def test_no_request_generated_from_the_openapi_spec_gets_a_server_error(stack):
    stack.start_api()
    spec_text = httpx.get(stack.url + "/openapi.json", timeout=10).text
    schema = schemathesis.openapi.from_url(stack.url + "/openapi.json")
    tenant_key = stack.create_key("acme")
    statuses: Counter = Counter()
    failures: list[str] = []
    started = time.monotonic()
    session = requests.Session()  # keep-alive; the API sets no cookies
    drawn = _generated_cases(spec_text, schema)
    assert len({label for label, _, _ in drawn}) >= 10, [label for label, _, _ in drawn]
    for label, mode, cases in drawn:
        for case in cases:
            # Each generated case is sent as admin and as a tenant (the key is only a header given
            # at call time), to this stack's URL; the first failure of an operation and mode is kept.
            try:
                for key in (stack.admin_key, tenant_key):
                    response = case.call(base_url=stack.url, session=session, headers={"Authorization": f"Bearer {key}"},
                                         timeout=20)
                    statuses[(label, response.status_code)] += 1
                    case.validate_response(response, checks=[not_a_server_error])
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then fail once
                failures.append(f"{label} [{mode.value}]: {str(exc)[:1500]}")
                break
    session.close()
    elapsed = time.monotonic() - started
    summary = Counter()
    for (_, status), n in statuses.items():
        summary[status // 100 * 100] += n
    print(f"\nschemathesis: {len({label for label, _, _ in drawn})} operations, {sum(statuses.values())} requests in {elapsed:.1f}s; "
          f"by status class {dict(sorted(summary.items()))}")
    assert not failures, "\n\n".join(failures) + "\n\napi log:\n" + stack.log("api")[-4000:]
    assert summary[500] == 0

    # Edge cases the fuzzer found once (or could): numbers past the 32-bit columns are 4xx.
    headers = stack.headers
    for path, params in (("/api/history", {"since": 10**30}), ("/api/history", {"until": 2**31}),
                         ("/api/history", {"window_s": 10**20}), ("/api/recommendations/624925781985223901184", {}),
                         ("/api/recommendations/0", {})):
        r = httpx.get(stack.url + path, params=params, headers=headers)
        assert 400 <= r.status_code < 500, (path, params, r.status_code, r.text)
    # NUL cannot be stored by PostgreSQL: refused up front, in the query and in any JSON body.
    r = httpx.get(stack.url + "/api/latest", params={"tenant": "a\x00"}, headers=headers)
    assert r.status_code == 400 and "NUL" in r.json()["detail"]
    r = httpx.post(stack.url + "/api/keys", content=b'{"tenant": "a\\u0000"}',
                   headers={**headers, "content-type": "application/json"})
    assert r.status_code == 400 and "NUL" in r.json()["detail"], r.text
