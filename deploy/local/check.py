#!/usr/bin/env python3
"""End-to-end check of the local endpoint's event wiring (deploy/local/up --check).

Puts events on the buses with PutEvents and reads them back over SQS, then deletes them:
  1. source "sandboxd" on the sandboxd bus   -> intake queue AND observer queue
  2. an aws.codebuild "CodeBuild Build State Change" on the sandboxd bus -> intake AND observer
  3. the same service event on the default bus (where real AWS delivers it) -> intake
Each event carries a fresh check id in its detail; messages that are not the check's are made
visible again at once (never deleted), so the check can run next to a daemon or a test.
Exit status 0 when every expected message arrived within the wait, 1 otherwise.
"""

import json
import os
import sys
import time
import uuid
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("SANDBOXD_LOCAL_STATE", ROOT / "target" / "local-aws"))
WAIT_SECONDS = float(os.environ.get("SANDBOXD_LOCAL_CHECK_WAIT", "5"))


def main():
    res = json.loads((STATE / "resources.json").read_text())
    kw = dict(
        region_name=res["region"],
        endpoint_url=os.environ.get("SANDBOXD_MOTO_ENDPOINT", res["endpoint"]),
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    eb = boto3.client("events", **kw)
    sqs = boto3.client("sqs", **kw)
    queues = {"intake": res["intake_queue_url"], "observer": res["observer_queue_url"]}

    check_id = str(uuid.uuid4())
    events = [
        # (label, bus, source, detail-type, queues it must reach)
        ("own-event", res["event_bus_name"], res["event_source"], "LocalEndpointCheck", {"intake", "observer"}),
        ("codebuild-on-bus", res["event_bus_name"], "aws.codebuild", "CodeBuild Build State Change",
         {"intake", "observer"}),
        ("codebuild-on-default", "default", "aws.codebuild", "CodeBuild Build State Change", {"intake"}),
    ]
    entries = [
        {
            "EventBusName": bus,
            "Source": source,
            "DetailType": detail_type,
            "Detail": json.dumps({"checkId": check_id, "label": label, "build-status": "SUCCEEDED"}),
        }
        for label, bus, source, detail_type, _ in events
    ]
    out = eb.put_events(Entries=entries)
    if out.get("FailedEntryCount"):
        print(f"check: PutEvents refused entries: {out['Entries']}", file=sys.stderr)
        return 1
    print(f"check: put {len(entries)} events (check id {check_id})")

    expected = {(q, label) for label, _, _, _, qs in events for q in qs}
    got, unexpected = set(), set()

    def handle(qname, url, msgs):
        for m in msgs:
            try:
                body = json.loads(m["Body"])
                detail = body.get("detail") or {}
            except (ValueError, AttributeError):
                body, detail = {}, {}
            if isinstance(detail, dict) and detail.get("checkId") == check_id:
                label = detail.get("label")
                envelope_ok = all(k in body for k in ("id", "time", "source", "detail-type", "detail"))
                print(
                    f"check: {qname:<9} received {label:<22} source={body.get('source')} "
                    f"detail-type={body.get('detail-type')!r} id={body.get('id')}"
                    + ("" if envelope_ok else " (EventBridge envelope incomplete)")
                )
                (got if (qname, label) in expected else unexpected).add((qname, label))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            else:
                # Not ours: hand it back untouched.
                sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)

    deadline = time.monotonic() + WAIT_SECONDS
    for qname, url in queues.items():
        want = {label for q, label in expected if q == qname}
        while want - {label for q, label in got if q == qname}:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            handle(qname, url, sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=max(1, min(20, int(left + 0.999))),
                VisibilityTimeout=30,
            ).get("Messages", []))
    # One more short look at each queue: an event routed where it should not be is an error (and
    # is deleted, so it does not reach a daemon or a test).
    for qname, url in queues.items():
        handle(qname, url, sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=30
        ).get("Messages", []))

    missing = expected - got
    for q, label in sorted(missing):
        print(f"check: MISSING {label} on the {q} queue after {WAIT_SECONDS:g} s", file=sys.stderr)
    for q, label in sorted(unexpected):
        print(f"check: UNEXPECTED {label} on the {q} queue", file=sys.stderr)
    if missing or unexpected:
        return 1
    print(f"check: ok, all {len(expected)} deliveries arrived and were deleted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
