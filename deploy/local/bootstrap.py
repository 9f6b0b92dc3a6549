#!/usr/bin/env python3
"""Create, idempotently, in the local AWS endpoint (moto's server) everything sandboxd's local
configuration names, then write the ids to target/local-aws/resources.{json,toml}.

Run by deploy/local/up with the virtualenv's python (boto3 comes with moto[server]). Every resource
is looked up first and created only when missing; each one is reported on one line as
`kind  name  id  created|exists|updated`.

Environment: SANDBOXD_MOTO_ENDPOINT (default http://127.0.0.1:${SANDBOXD_MOTO_PORT:-5000}),
SANDBOXD_LOCAL_ACCOUNTS (pool accounts, default 5), SANDBOXD_LOCAL_STATE (output directory,
default target/local-aws under the repository root).
"""

import json
import os
import sys
import time
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

REGION = "us-east-1"
ENDPOINT = os.environ.get(
    "SANDBOXD_MOTO_ENDPOINT", f"http://127.0.0.1:{os.environ.get('SANDBOXD_MOTO_PORT', '5000')}"
)
ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("SANDBOXD_LOCAL_STATE", ROOT / "target" / "local-aws"))
ACCOUNTS = int(os.environ.get("SANDBOXD_LOCAL_ACCOUNTS", "5"))

# Names. The pool OU names are ISB's (namespace "ndx"); the daemon's config refers to the ids.
POOL_PARENT_OU = "ndx_InnovationSandboxAccountPool"
POOL_OUS = ["Entry", "Available", "Active", "Frozen", "CleanUp", "Quarantine", "Exit"]
# role key -> (permission set name, group display name, test user email)
ROLES = {
    "user": ("User", "sandboxd-users", "user@example.gov.uk"),
    "manager": ("Manager", "sandboxd-managers", "manager@example.gov.uk"),
    "admin": ("Admin", "sandboxd-admins", "admin@example.gov.uk"),
}
GROUP_KEYS = {"user": "users", "manager": "managers", "admin": "admins"}
EVENT_BUS = "sandboxd"
EVENT_SOURCE = "sandboxd"
INTAKE_QUEUE = "sandboxd-intake"
DLQ = "sandboxd-intake-dlq"
OBSERVER_QUEUE = "sandboxd-observer"
MAX_RECEIVE_COUNT = 5
INTAKE_RULE = "sandboxd-intake"
INTAKE_AWS_RULE = "sandboxd-intake-aws"  # on the default bus, where real AWS delivers service events
OBSERVER_RULE = "sandboxd-observer"
ARTIFACT_BUCKET = "sandboxd-local-artifacts"
NUKE_SOURCE_KEY = "nuke.zip"
NUKE_PROJECT = "sandboxd-nuke"
NUKE_ROLE = "sandboxd-nuke-codebuild"

# The AWS service events the daemon reacts to (issue 4, item 3).
AWS_SERVICE_PATTERNS = [
    {"source": ["aws.codebuild"], "detail-type": ["CodeBuild Build State Change"]},
    {"source": ["aws.cloudformation"], "detail-type": ["CloudFormation Stack Status Change"]},
    {
        "source": ["aws.organizations"],
        "detail-type": ["AWS API Call via CloudTrail"],
        "detail": {"eventSource": ["organizations.amazonaws.com"], "eventName": ["MoveAccount"]},
    },
]
# The daemon's own events (routed back so work survives a restart) plus the service events.
INTAKE_PATTERN = {"$or": [{"source": [{"prefix": EVENT_SOURCE}]}] + AWS_SERVICE_PATTERNS}
INTAKE_AWS_PATTERN = {"$or": AWS_SERVICE_PATTERNS}
# Every event on the bus: prefix "" matches any source (an empty pattern is refused by AWS).
OBSERVER_PATTERN = {"source": [{"prefix": ""}]}


def client(service):
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


LINES = []


def report(kind, name, ident, state):
    LINES.append((kind, name, str(ident), state))
    print(f"{kind:<17} {name:<46} {ident}  {state}", flush=True)


def paginate(c, op, key, **kwargs):
    out = []
    if c.can_paginate(op):
        for page in c.get_paginator(op).paginate(**kwargs):
            out.extend(page.get(key, []))
    else:
        out.extend(getattr(c, op)(**kwargs).get(key, []))
    return out


def error_code(e):
    return e.response.get("Error", {}).get("Code", "")


# --- Organizations ------------------------------------------------------------------------------


def organization(org):
    try:
        o = org.describe_organization()["Organization"]
        state = "exists"
    except ClientError as e:
        if error_code(e) != "AWSOrganizationsNotInUseException":
            raise
        o = org.create_organization(FeatureSet="ALL")["Organization"]
        state = "created"
    report("organization", o["Id"], o["MasterAccountId"], state)
    root = org.list_roots()["Roots"][0]
    report("org-root", root["Name"], root["Id"], "exists")
    return o, root["Id"]


def ou(org, parent_id, name):
    for u in paginate(org, "list_organizational_units_for_parent", "OrganizationalUnits", ParentId=parent_id):
        if u["Name"] == name:
            report("ou", name, u["Id"], "exists")
            return u["Id"]
    u = org.create_organizational_unit(ParentId=parent_id, Name=name)["OrganizationalUnit"]
    report("ou", name, u["Id"], "created")
    return u["Id"]


def pool_accounts(org, root_id, entry_id, n):
    by_name = {a["Name"]: a for a in paginate(org, "list_accounts", "Accounts")}
    ids = []
    for i in range(1, n + 1):
        name = f"pool-{i:03d}"
        if name in by_name:
            acct = by_name[name]["Id"]
            state = "exists"
            # A previous run that stopped between create and move left it in the root: finish it.
            # An account elsewhere was moved on purpose (by the daemon or a test): leave it there.
            parent = org.list_parents(ChildId=acct)["Parents"][0]["Id"]
            if parent == root_id:
                org.move_account(AccountId=acct, SourceParentId=root_id, DestinationParentId=entry_id)
                state = "updated (moved to Entry)"
        else:
            status = org.create_account(Email=f"{name}@sandboxd.local", AccountName=name)["CreateAccountStatus"]
            for _ in range(60):
                if status["State"] != "IN_PROGRESS":
                    break
                time.sleep(0.5)
                status = org.describe_create_account_status(CreateAccountRequestId=status["Id"])[
                    "CreateAccountStatus"
                ]
            if status["State"] != "SUCCEEDED":
                raise SystemExit(f"bootstrap: create_account {name} ended {status['State']}: {status}")
            acct = status["AccountId"]
            org.move_account(AccountId=acct, SourceParentId=root_id, DestinationParentId=entry_id)
            state = "created"
        report("pool-account", name, acct, state)
        ids.append(acct)
    return ids


# --- Identity Center ----------------------------------------------------------------------------


def sso_instance(sso):
    instances = paginate(sso, "list_instances", "Instances")
    if not instances:
        raise SystemExit("bootstrap: the endpoint has no Identity Center instance (list_instances is empty)")
    inst = instances[0]
    report("sso-instance", inst["IdentityStoreId"], inst["InstanceArn"], "exists")
    return inst["InstanceArn"], inst["IdentityStoreId"]


def permission_set(sso, instance_arn, name):
    for arn in paginate(sso, "list_permission_sets", "PermissionSets", InstanceArn=instance_arn):
        ps = sso.describe_permission_set(InstanceArn=instance_arn, PermissionSetArn=arn)["PermissionSet"]
        if ps["Name"] == name:
            report("permission-set", name, arn, "exists")
            return arn
    arn = sso.create_permission_set(
        InstanceArn=instance_arn, Name=name, Description=f"sandboxd {name} access to a leased account"
    )["PermissionSet"]["PermissionSetArn"]
    report("permission-set", name, arn, "created")
    return arn


def group(ids, store_id, name):
    for g in paginate(ids, "list_groups", "Groups", IdentityStoreId=store_id):
        if g.get("DisplayName") == name:
            report("group", name, g["GroupId"], "exists")
            return g["GroupId"]
    gid = ids.create_group(IdentityStoreId=store_id, DisplayName=name, Description=f"sandboxd {name}")["GroupId"]
    report("group", name, gid, "created")
    return gid


def user(ids, store_id, email, role):
    for u in paginate(ids, "list_users", "Users", IdentityStoreId=store_id):
        if u.get("UserName") == email:
            report("user", email, u["UserId"], "exists")
            return u["UserId"]
    uid = ids.create_user(
        IdentityStoreId=store_id,
        UserName=email,
        DisplayName=f"Local {role.capitalize()}",
        Name={"GivenName": "Local", "FamilyName": role.capitalize()},
        Emails=[{"Value": email, "Type": "work", "Primary": True}],
    )["UserId"]
    report("user", email, uid, "created")
    return uid


def membership(ids, store_id, group_id, user_id, label):
    for m in paginate(ids, "list_group_memberships", "GroupMemberships", IdentityStoreId=store_id, GroupId=group_id):
        if m.get("MemberId", {}).get("UserId") == user_id:
            report("group-membership", label, m["MembershipId"], "exists")
            return m["MembershipId"]
    mid = ids.create_group_membership(IdentityStoreId=store_id, GroupId=group_id, MemberId={"UserId": user_id})[
        "MembershipId"
    ]
    report("group-membership", label, mid, "created")
    return mid


# --- Events and queues --------------------------------------------------------------------------


def event_bus(eb, name):
    try:
        arn = eb.describe_event_bus(Name=name)["Arn"]
        report("event-bus", name, arn, "exists")
    except ClientError as e:
        if error_code(e) != "ResourceNotFoundException":
            raise
        arn = eb.create_event_bus(Name=name)["EventBusArn"]
        report("event-bus", name, arn, "created")
    return arn


def queue(sqs, name, attributes=None):
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        state = "exists"
    except ClientError as e:
        if error_code(e) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise
        url = sqs.create_queue(QueueName=name, Attributes=attributes or {})["QueueUrl"]
        state = "created"
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    report("sqs-queue", name, url, state)
    return url, arn, state == "created"


def queue_attribute(sqs, url, name, label, attribute, value, compare=None, fresh=False):
    """Set one queue attribute unless it already has the value (JSON values compared parsed).
    `fresh`: the queue was just created with the attribute, so report it as created."""
    current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[attribute]).get("Attributes", {}).get(attribute)
    same = current is not None and (compare(current, value) if compare else current == value)
    if same:
        report(label, name, attribute, "created" if fresh else "exists")
    else:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={attribute: value})
        report(label, name, attribute, "created" if current is None else "updated")


def json_equal(a, b):
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def redrive_equal(a, b):
    # maxReceiveCount may come back as a number or a string.
    try:
        x, y = json.loads(a), json.loads(b)
    except ValueError:
        return False
    return x.get("deadLetterTargetArn") == y.get("deadLetterTargetArn") and str(x.get("maxReceiveCount")) == str(
        y.get("maxReceiveCount")
    )


def queue_policy(queue_arn, rule_arns):
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AllowEventBridgeRules",
                    "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": sorted(rule_arns)}},
                }
            ],
        },
        sort_keys=True,
    )


def rule(eb, bus, name, pattern, description, target_arn):
    pattern_json = json.dumps(pattern, sort_keys=True)
    try:
        current = eb.describe_rule(Name=name, EventBusName=bus)
        if json.loads(current.get("EventPattern") or "null") == pattern and current.get("State") == "ENABLED":
            state = "exists"
        else:
            state = "updated"
    except ClientError as e:
        if error_code(e) != "ResourceNotFoundException":
            raise
        current, state = None, "created"
    if state != "exists":
        arn = eb.put_rule(
            Name=name, EventBusName=bus, EventPattern=pattern_json, State="ENABLED", Description=description
        )["RuleArn"]
    else:
        arn = current["Arn"]
    report("event-rule", f"{bus}/{name}", arn, state)

    targets = paginate(eb, "list_targets_by_rule", "Targets", Rule=name, EventBusName=bus)
    if any(t["Arn"] == target_arn for t in targets):
        report("rule-target", f"{name} -> {target_arn.split(':')[-1]}", target_arn, "exists")
    else:
        eb.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": target_arn.split(":")[-1], "Arn": target_arn}])
        report("rule-target", f"{name} -> {target_arn.split(':')[-1]}", target_arn, "created")
    return arn


# --- CodeBuild ----------------------------------------------------------------------------------


def bucket(s3, name):
    try:
        s3.head_bucket(Bucket=name)
        report("s3-bucket", name, f"arn:aws:s3:::{name}", "exists")
    except ClientError as e:
        if error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
            raise
        s3.create_bucket(Bucket=name)
        report("s3-bucket", name, f"arn:aws:s3:::{name}", "created")


def placeholder_object(s3, bucket_name, key):
    try:
        s3.head_object(Bucket=bucket_name, Key=key)
        report("s3-object", f"{bucket_name}/{key}", f"s3://{bucket_name}/{key}", "exists")
    except ClientError as e:
        if error_code(e) not in ("404", "NoSuchKey", "NotFound"):
            raise
        import io
        import zipfile

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(
                "buildspec.yml",
                "version: 0.2\nphases:\n  build:\n    commands:\n      - echo local placeholder for aws-nuke\n",
            )
        s3.put_object(Bucket=bucket_name, Key=key, Body=buf.getvalue())
        report("s3-object", f"{bucket_name}/{key}", f"s3://{bucket_name}/{key}", "created")


def role(iam, name):
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        report("iam-role", name, arn, "exists")
    except ClientError as e:
        if error_code(e) != "NoSuchEntity":
            raise
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        arn = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description="Service role of the sandboxd-nuke CodeBuild project (local endpoint)",
        )["Role"]["Arn"]
        report("iam-role", name, arn, "created")
    return arn


def codebuild_project(cb, name, role_arn, source_location):
    found = cb.batch_get_projects(names=[name]).get("projects", [])
    if found:
        report("codebuild-project", name, found[0]["arn"], "exists")
        return found[0]["arn"]
    arn = cb.create_project(
        name=name,
        description="aws-nuke run that cleans a sandbox account (placeholder source on the local endpoint)",
        source={"type": "S3", "location": source_location},
        artifacts={"type": "NO_ARTIFACTS"},
        environment={
            "type": "LINUX_CONTAINER",
            "image": "aws/codebuild/standard:7.0",
            "computeType": "BUILD_GENERAL1_SMALL",
        },
        serviceRole=role_arn,
        timeoutInMinutes=60,
    )["project"]["arn"]
    report("codebuild-project", name, arn, "created")
    return arn


# --- Output -------------------------------------------------------------------------------------


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string for these values


def to_toml(res):
    lines = [
        "# Written by deploy/local/up (deploy/local/bootstrap.py): the ids of the resources it created",
        f"# in the local AWS endpoint {res['endpoint']}. Regenerated on every run; do not edit.",
        "",
    ]
    tables = []
    for k, v in res.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {toml_value(v)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        for k, v in table.items():
            key = k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
            lines.append(f"{key} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


def main():
    org = client("organizations")
    sso = client("sso-admin")
    ids = client("identitystore")
    eb = client("events")
    sqs = client("sqs")
    s3 = client("s3")
    iam = client("iam")
    cb = client("codebuild")

    print(f"bootstrap: local AWS endpoint {ENDPOINT}, region {REGION}", flush=True)

    # Organization, OUs, pool accounts.
    o, root_id = organization(org)
    pool_parent = ou(org, root_id, POOL_PARENT_OU)
    ous = {"pool_parent": pool_parent}
    for name in POOL_OUS:
        ous[name.lower()] = ou(org, pool_parent, name)
    accounts = pool_accounts(org, root_id, ous["entry"], ACCOUNTS)

    # Identity Center.
    instance_arn, store_id = sso_instance(sso)
    permission_sets, groups, users = {}, {}, {}
    for key, (ps_name, group_name, email) in ROLES.items():
        permission_sets[key] = permission_set(sso, instance_arn, ps_name)
        groups[GROUP_KEYS[key]] = group(ids, store_id, group_name)
    for key, (_, group_name, email) in ROLES.items():
        users[key] = user(ids, store_id, email, key)
        membership(ids, store_id, groups[GROUP_KEYS[key]], users[key], f"{email} in {group_name}")

    # Event bus, queues, rules.
    event_bus(eb, EVENT_BUS)
    dlq_url, dlq_arn, _ = queue(sqs, DLQ, {"MessageRetentionPeriod": "1209600"})
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)})
    intake_url, intake_arn, fresh = queue(sqs, INTAKE_QUEUE, {"RedrivePolicy": redrive})
    queue_attribute(sqs, intake_url, INTAKE_QUEUE, "redrive-policy", "RedrivePolicy", redrive, redrive_equal, fresh)
    observer_url, observer_arn, _ = queue(sqs, OBSERVER_QUEUE)

    intake_rule_arn = rule(
        eb, EVENT_BUS, INTAKE_RULE, INTAKE_PATTERN,
        "sandboxd's own events and the AWS service events it reacts to, to the intake queue", intake_arn,
    )
    intake_aws_rule_arn = rule(
        eb, "default", INTAKE_AWS_RULE, INTAKE_AWS_PATTERN,
        "AWS service events sandboxd reacts to (delivered on the default bus by AWS), to the intake queue",
        intake_arn,
    )
    observer_rule_arn = rule(
        eb, EVENT_BUS, OBSERVER_RULE, OBSERVER_PATTERN, "every event on the sandboxd bus, to the observer queue",
        observer_arn,
    )
    queue_attribute(
        sqs, intake_url, INTAKE_QUEUE, "queue-policy", "Policy",
        queue_policy(intake_arn, [intake_rule_arn, intake_aws_rule_arn]), json_equal,
    )
    queue_attribute(
        sqs, observer_url, OBSERVER_QUEUE, "queue-policy", "Policy", queue_policy(observer_arn, [observer_rule_arn]),
        json_equal,
    )

    # CodeBuild project for cleanup.
    bucket(s3, ARTIFACT_BUCKET)
    placeholder_object(s3, ARTIFACT_BUCKET, NUKE_SOURCE_KEY)
    role_arn = role(iam, NUKE_ROLE)
    project_arn = codebuild_project(cb, NUKE_PROJECT, role_arn, f"{ARTIFACT_BUCKET}/{NUKE_SOURCE_KEY}")

    management = o["MasterAccountId"]
    resources = {
        "region": REGION,
        "endpoint": ENDPOINT,
        "intake_queue_url": intake_url,
        "intake_queue_arn": intake_arn,
        "dlq_url": dlq_url,
        "dlq_arn": dlq_arn,
        "max_receive_count": MAX_RECEIVE_COUNT,
        "observer_queue_url": observer_url,
        "observer_queue_arn": observer_arn,
        "event_bus_name": EVENT_BUS,
        "event_source": EVENT_SOURCE,
        "organization_id": o["Id"],
        "root_id": root_id,
        "management_account_id": management,
        # On the local endpoint everything lives in the one (management) account.
        "hub_account_id": management,
        "identity_center_account_id": management,
        "identity_center_instance_arn": instance_arn,
        "identity_store_id": store_id,
        "codebuild_project": NUKE_PROJECT,
        "codebuild_project_arn": project_arn,
        "codebuild_role_arn": role_arn,
        "pool_account_ids": accounts,
        "ous": ous,
        "permission_sets": permission_sets,
        "groups": groups,
        "test_users": {ROLES[k][2]: v for k, v in users.items()},
        "pool_accounts": {f"pool-{i + 1:03d}": a for i, a in enumerate(accounts)},
    }
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "resources.json").write_text(json.dumps(resources, indent=2) + "\n")
    (STATE / "resources.toml").write_text(to_toml(resources))

    created = sum(1 for line in LINES if line[3] != "exists")
    print(
        f"bootstrap: {len(LINES)} resources, {created} created or updated, {len(LINES) - created} already there; "
        f"ids in {STATE / 'resources.json'} and {STATE / 'resources.toml'}",
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except ClientError as e:
        sys.exit(f"bootstrap: {e}")
