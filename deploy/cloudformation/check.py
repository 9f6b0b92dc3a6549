#!/usr/bin/env python3
"""Check deploy/cloudformation/*.yaml: parse them, then deploy each to the local AWS endpoint.

Run with the local virtualenv's python (boto3 and PyYAML come with moto[server]) after
deploy/local/up:

    target/local-aws/venv/bin/python deploy/cloudformation/check.py

1. Static: each template is parsed as YAML with the CloudFormation short-form tags (!Ref, !Sub,
   !GetAtt, !If, ...) registered; every Ref, GetAtt, ${...} in Sub, Condition and !If names
   something the template declares (or a pseudo parameter).
2. Local endpoint (http://127.0.0.1:${SANDBOXD_MOTO_PORT:-5000}, or SANDBOXD_MOTO_ENDPOINT):
   validate_template, create_stack with a unique stack name and namespace and sample parameters,
   a bounded wait for CREATE_COMPLETE, then assertions on the outputs and on the created
   resources (queue redrive policy and encryption, rules and their targets on the right buses,
   the daemon policy and its attachment, the cleanup role's trust and deny), then delete_stack and
   a check that the resources went with it.
Resource types moto's CloudFormation does not implement (it skips them with a warning) are
reported on a `note:` line, and only the assertions about them are skipped.
Exit status 0 when everything passed, 1 with `check: FAIL ...` otherwise.
"""

import ast
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path

import boto3
import yaml
from botocore.exceptions import BotoCoreError, ClientError

HERE = Path(__file__).resolve().parent
ENDPOINT = os.environ.get(
    "SANDBOXD_MOTO_ENDPOINT", f"http://127.0.0.1:{os.environ.get('SANDBOXD_MOTO_PORT', '5000')}"
)
REGION = "us-east-1"
WAIT_SECONDS = float(os.environ.get("SANDBOXD_CFN_CHECK_WAIT", "30"))
PSEUDO = {
    "AWS::AccountId", "AWS::NotificationARNs", "AWS::NoValue", "AWS::Partition", "AWS::Region",
    "AWS::StackId", "AWS::StackName", "AWS::URLSuffix",
}


class CheckFailed(Exception):
    pass


def ok(msg):
    print(f"  ok    {msg}", flush=True)


def note(msg):
    print(f"  note  {msg}", flush=True)


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)
    ok(msg)


# --- Static checks ------------------------------------------------------------------------------

TAGS = ["Ref", "Condition", "GetAtt", "Sub", "Join", "Select", "Split", "If", "Equals", "Not", "And", "Or",
        "FindInMap", "GetAZs", "Base64", "ImportValue", "Cidr", "Transform", "Length", "ToJsonString"]


class CfnLoader(yaml.SafeLoader):
    pass


def _tag_constructor(tag):
    key = "Ref" if tag == "Ref" else ("Condition" if tag == "Condition" else f"Fn::{tag}")

    def construct(loader, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
            if tag == "GetAtt":
                value = value.split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return {key: value}

    return construct


for _t in TAGS:
    CfnLoader.add_constructor(f"!{_t}", _tag_constructor(_t))


def load(path):
    try:
        return yaml.load(path.read_text(), Loader=CfnLoader)
    except yaml.YAMLError as e:
        raise CheckFailed(f"{path.name}: not valid YAML: {e}")


def lint(path, doc):
    """Every name a template refers to is declared."""
    for section in ("Resources", "Outputs"):
        if not isinstance(doc.get(section), dict) or not doc[section]:
            raise CheckFailed(f"{path.name}: no {section}")
    params = set(doc.get("Parameters") or {})
    resources = set(doc["Resources"])
    conditions = set(doc.get("Conditions") or {})
    names = params | resources | PSEUDO
    problems = []

    def walk(node, where, sub_vars=()):
        if isinstance(node, dict):
            if len(node) == 1:
                (k, v), = node.items()
                if k == "Ref" and isinstance(v, str) and v not in names:
                    problems.append(f"{where}: Ref to undeclared {v}")
                if k == "Fn::GetAtt":
                    target = v[0] if isinstance(v, list) else str(v).split(".")[0]
                    if target not in resources:
                        problems.append(f"{where}: GetAtt of undeclared resource {target}")
                if k == "Fn::If" and isinstance(v, list) and v and v[0] not in conditions:
                    problems.append(f"{where}: If on undeclared condition {v[0]}")
                if k == "Condition" and isinstance(v, str) and where.startswith("Conditions") and v not in conditions:
                    problems.append(f"{where}: Condition {v} undeclared")
                if k == "Fn::Sub":
                    text, local = (v, {}) if isinstance(v, str) else (v[0], v[1] if len(v) > 1 else {})
                    for var in re.findall(r"\$\{([^}!]+)\}", text):
                        base = var.split(".")[0]
                        if var not in names and var not in local and base not in resources:
                            problems.append(f"{where}: Sub variable ${{{var}}} undeclared")
                    walk(local, where)
                    return
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    for section in ("Conditions", "Resources", "Outputs"):
        walk(doc.get(section) or {}, section)
    for section in ("Resources", "Outputs"):
        for name, body in doc[section].items():
            c = (body or {}).get("Condition")
            if c is not None and c not in conditions:
                problems.append(f"{section}.{name}: Condition {c} undeclared")
    for name, body in doc["Resources"].items():
        if not isinstance(body, dict) or "Type" not in body:
            problems.append(f"Resources.{name}: no Type")
    if problems:
        raise CheckFailed(f"{path.name}: " + "; ".join(problems))
    ok(f"{path.name}: YAML with CloudFormation tags parses; {len(resources)} resources, "
       f"{len(params)} parameters, every Ref/GetAtt/Sub/Condition resolves")


# --- Against the local endpoint -----------------------------------------------------------------


def client(service):
    return boto3.client(service, region_name=REGION, endpoint_url=ENDPOINT,
                        aws_access_key_id="test", aws_secret_access_key="test")


def deploy(cf, path, stack, params):
    body = path.read_text()
    cf.validate_template(TemplateBody=body)
    ok(f"{path.name}: validate_template")
    cf.create_stack(
        StackName=stack, TemplateBody=body, Capabilities=["CAPABILITY_NAMED_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        s = cf.describe_stacks(StackName=stack)["Stacks"][0]
        status = s["StackStatus"]
        if status == "CREATE_COMPLETE":
            break
        if not status.endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            events = cf.describe_stack_events(StackName=stack).get("StackEvents", [])
            reasons = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}" for e in events
                       if "FAILED" in e.get("ResourceStatus", "")]
            raise CheckFailed(f"{path.name}: stack {stack} is {status} (waited up to {WAIT_SECONDS:.0f} s) {reasons}")
        time.sleep(0.5)
    ok(f"{path.name}: stack {stack} CREATE_COMPLETE")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])}
    return outputs


def unsupported(cf, path, doc, stack):
    """Resources in the template that moto's CloudFormation did not create: {logical id: type}."""
    created = {r["LogicalResourceId"] for r in cf.list_stack_resources(StackName=stack)["StackResourceSummaries"]}
    missing = {k: v["Type"] for k, v in doc["Resources"].items() if k not in created}
    for logical, rtype in sorted(missing.items()):
        note(f"{path.name}: the local endpoint (moto) does not implement {rtype} in CloudFormation; "
             f"{logical} was not created and its assertions are skipped")
    return missing


def delete(cf, stack):
    try:
        cf.delete_stack(StackName=stack)
    except ClientError:
        return  # never created
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            status = cf.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
        except ClientError:
            status = "DELETE_COMPLETE"  # gone from the listing
        if status == "DELETE_COMPLETE":
            ok(f"stack {stack} DELETE_COMPLETE")
            return
        if not status.endswith("_IN_PROGRESS"):
            raise CheckFailed(f"stack {stack} is {status} after delete_stack")
        time.sleep(0.5)
    raise CheckFailed(f"stack {stack} not deleted after {WAIT_SECONDS:.0f} s")


def queue_exists(sqs, name):
    try:
        sqs.get_queue_url(QueueName=name)
        return True
    except ClientError:
        return False


def check_hub(cf, suffix):
    path = HERE / "sandboxd.yaml"
    doc = load(path)
    ns = f"cfncheck-{suffix}"
    bus = f"{ns}-bus"
    stack = f"sandboxd-cfncheck-{suffix}"
    iam, sqs, eb = client("iam"), client("sqs"), client("events")

    # The role the daemon runs as (the policy is attached to it).
    daemon_role = f"{ns}-daemon"
    daemon_role_arn = iam.create_role(
        RoleName=daemon_role,
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
    )["Role"]["Arn"]
    params = {
        "Namespace": ns, "EventBusName": bus, "CreateObserverQueue": "true",
        "ManagementAccountId": "123456789012", "OrganizationId": "o-abcdefghij",
        "PoolParentOuId": "ou-abcd-00000000", "EntryOuId": "ou-abcd-11111111", "AvailableOuId": "ou-abcd-22222222",
        "ActiveOuId": "ou-abcd-33333333", "FrozenOuId": "ou-abcd-44444444", "CleanUpOuId": "ou-abcd-55555555",
        "QuarantineOuId": "ou-abcd-66666666", "ExitOuId": "ou-abcd-77777777",
        "IdentityCenterInstanceArn": "arn:aws:sso:::instance/ssoins-0123456789abcdef",
        "IdentityStoreId": "d-0123456789", "IdentityCenterAccountId": "123456789012",
        "HubAccountId": "123456789012", "CodeBuildProjectName": f"{ns}-nuke",
        "CleanupRoleName": f"{ns}-cleanup", "ReportsBucketName": f"{ns}-reports",
        "DaemonPrincipalArn": daemon_role_arn,
    }
    try:
        outputs = deploy(cf, path, stack, params)
        missing = unsupported(cf, path, doc, stack)
        want = {"EventBusName", "EventBusArn", "IntakeQueueUrl", "IntakeQueueArn", "IntakeQueueName",
                "DeadLetterQueueUrl", "DeadLetterQueueArn", "DeadLetterQueueName", "ObserverQueueUrl",
                "ObserverQueueArn", "IntakeRuleArn", "IntakeAwsRuleArn", "DaemonPolicyArn"}
        expect(want <= set(outputs), f"outputs present: {', '.join(sorted(want))}")
        expect(outputs["EventBusName"] == bus, f"EventBusName output is {bus}")

        # Queues.
        intake_url = sqs.get_queue_url(QueueName=f"{ns}-intake")["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=intake_url, AttributeNames=["All"])["Attributes"]
        expect(attrs["QueueArn"] == outputs["IntakeQueueArn"], "intake queue exists with the output ARN")
        redrive = json.loads(attrs.get("RedrivePolicy") or "{}")
        expect(redrive.get("deadLetterTargetArn") == outputs["DeadLetterQueueArn"]
               and str(redrive.get("maxReceiveCount")) == "5",
               "intake queue RedrivePolicy -> dead-letter queue, maxReceiveCount 5")
        expect(attrs.get("SqsManagedSseEnabled") == "true", "intake queue has SSE (SqsManagedSseEnabled)")
        dlq_url = sqs.get_queue_url(QueueName=f"{ns}-intake-dlq")["QueueUrl"]
        dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
        expect(dlq["MessageRetentionPeriod"] == "1209600" and dlq.get("SqsManagedSseEnabled") == "true",
               "dead-letter queue: 14-day retention, SSE")
        expect(queue_exists(sqs, f"{ns}-observer"), "observer queue exists (CreateObserverQueue=true)")

        # Rules on the right buses, with the right targets.
        eb.describe_event_bus(Name=bus)
        ok(f"event bus {bus} exists")
        on_bus = {r["Name"]: r for r in eb.list_rules(EventBusName=bus)["Rules"]}
        on_default = {r["Name"]: r for r in eb.list_rules(EventBusName="default")["Rules"]}
        expect({f"{ns}-intake", f"{ns}-observer"} <= set(on_bus), f"rules {ns}-intake and {ns}-observer on bus {bus}")
        expect(f"{ns}-intake-aws" in on_default, f"rule {ns}-intake-aws on the default bus")
        pattern = json.loads(on_bus[f"{ns}-intake"]["EventPattern"])
        sources = [p.get("source") for p in pattern.get("$or", [])]
        expect([{"prefix": ns}] in sources and ["aws.codebuild"] in sources and ["aws.cloudformation"] in sources
               and ["aws.organizations"] in sources,
               "intake rule matches the namespace's source prefix, CodeBuild, CloudFormation, Organizations")
        for rule_name, bus_name, target in [
            (f"{ns}-intake", bus, outputs["IntakeQueueArn"]),
            (f"{ns}-intake-aws", "default", outputs["IntakeQueueArn"]),
            (f"{ns}-observer", bus, outputs["ObserverQueueArn"]),
        ]:
            arns = [t["Arn"] for t in eb.list_targets_by_rule(Rule=rule_name, EventBusName=bus_name)["Targets"]]
            expect(arns == [target], f"rule {rule_name} targets {target.split(':')[-1]}")

        # Queue policies (AWS::SQS::QueuePolicy).
        if "IntakeQueuePolicy" in missing:
            note("queue policies not asserted (AWS::SQS::QueuePolicy not created by the local endpoint)")
        else:
            policy = json.loads(attrs.get("Policy") or "{}")
            allow = [s for s in policy.get("Statement", []) if s.get("Effect") == "Allow"]
            expect(allow and allow[0]["Condition"]["ArnEquals"]["aws:SourceArn"]
                   == [outputs["IntakeRuleArn"], outputs["IntakeAwsRuleArn"]],
                   "intake queue policy allows events.amazonaws.com from the two rules only")

        # The daemon's policy.
        policy_arn = outputs["DaemonPolicyArn"]
        version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
        if isinstance(document, str):
            document = json.loads(document)
        statements = {s["Sid"]: s for s in document["Statement"]}
        expect(statements["IntakeQueue"]["Resource"] == [outputs["IntakeQueueArn"], outputs["DeadLetterQueueArn"],
                                                       outputs["ObserverQueueArn"]],
               "daemon policy: SQS receive/delete on the stack's queues only")
        expect(statements["DeadLetter"]["Resource"] == outputs["DeadLetterQueueArn"],
               "daemon policy: SendMessage on the dead-letter queue only")
        expect(statements["PublishEvents"]["Resource"] == outputs["EventBusArn"],
               "daemon policy: PutEvents on the bus only")
        expect(statements["CleanupProject"]["Resource"].endswith(f":project/{ns}-nuke"),
               "daemon policy: CodeBuild on the one project")
        expect(statements["AssumeCleanupRole"]["Resource"] == f"arn:aws:iam::*:role/{ns}-cleanup",
               "daemon policy: sts:AssumeRole on the cleanup role name only")
        wildcard = sorted(sid for sid, s in statements.items() if s["Resource"] == "*")
        expect(wildcard == ["CostRead"], "daemon policy: only ce:GetCostAndUsage has Resource \"*\"")
        attached = [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=daemon_role)["AttachedPolicies"]]
        expect(policy_arn in attached, f"daemon policy attached to role {daemon_role}")
    finally:
        # Also after a failed create: the endpoint may hold a half-made stack.
        delete(cf, stack)
        if queue_exists(sqs, f"{ns}-intake"):
            raise CheckFailed(f"queue {ns}-intake still exists after delete_stack")
        try:
            for p in iam.list_attached_role_policies(RoleName=daemon_role)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=daemon_role, PolicyArn=p["PolicyArn"])
            iam.delete_role(RoleName=daemon_role)
        except ClientError:
            pass
    ok("hub stack's queues are gone after delete_stack")


def check_pool_role(cf, suffix):
    path = HERE / "pool-account-role.yaml"
    doc = load(path)
    ns = f"cfncheck-{suffix}"
    stack = f"sandboxd-cfncheck-pool-{suffix}"
    role_name = f"{ns}-cleanup"
    iam = client("iam")
    params = {"Namespace": ns, "HubAccountId": "210987654321", "CodeBuildRoleName": f"{ns}-nuke-codebuild",
              "CleanupRoleName": role_name}
    try:
        outputs = deploy(cf, path, stack, params)
        unsupported(cf, path, doc, stack)
        expect({"CleanupRoleName", "CleanupRoleArn"} <= set(outputs), "outputs present: CleanupRoleArn, CleanupRoleName")
        role = iam.get_role(RoleName=role_name)["Role"]
        expect(role["Arn"] == outputs["CleanupRoleArn"], f"role {role_name} exists with the output ARN")
        trust = role["AssumeRolePolicyDocument"]
        if isinstance(trust, str):
            trust = json.loads(trust)
        (st,) = trust["Statement"]
        expect(st["Principal"]["AWS"] == "arn:aws:iam::210987654321:root"
               and st["Condition"]["ArnEquals"]["aws:PrincipalArn"]
               == f"arn:aws:iam::210987654321:role/{ns}-nuke-codebuild",
               "trust: only the hub account's CodeBuild role")
        inline = iam.get_role_policy(RoleName=role_name, PolicyName="protect-platform")["PolicyDocument"]
        if isinstance(inline, str):
            try:
                inline = json.loads(inline)
            except ValueError:
                # moto 5.2 stores an inline policy from CloudFormation as Python's repr of the dict.
                note("the local endpoint returns the inline policy as a Python repr, not JSON; parsed as such")
                inline = ast.literal_eval(inline)
        sids = {s["Sid"]: s for s in inline["Statement"]}
        expect(all(sids[s]["Effect"] == "Deny" for s in ("DenyPlatformRoles", "DenyPlatformStacks")),
               "inline policy denies changes to the platform's roles and stacks")
    finally:
        delete(cf, stack)
    try:
        iam.get_role(RoleName=role_name)
        raise CheckFailed(f"role {role_name} still exists after delete_stack")
    except ClientError:
        ok("cleanup role is gone after delete_stack")


def main():
    print(f"check: CloudFormation templates in {HERE}", flush=True)
    try:
        for p in sorted(HERE.glob("*.yaml")):
            lint(p, load(p))
        cf = client("cloudformation")
        try:
            cf.list_stacks()
        except Exception as e:  # noqa: BLE001 - any failure here means no endpoint
            raise CheckFailed(f"the local endpoint {ENDPOINT} does not answer ({e}); run deploy/local/up first")
        print(f"check: deploying to the local endpoint {ENDPOINT}", flush=True)
        suffix = uuid.uuid4().hex[:8]
        check_hub(cf, suffix)
        check_pool_role(cf, suffix)
    except CheckFailed as e:
        sys.exit(f"check: FAIL {e}")
    except (ClientError, BotoCoreError) as e:
        sys.exit(f"check: FAIL AWS error: {e}")
    print("check: PASS", flush=True)


if __name__ == "__main__":
    main()
