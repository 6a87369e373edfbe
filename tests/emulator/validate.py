"""Every request checked against the service's API model before the emulator acts on it.

AWS validates each request against its API model before it does anything: a member
the model marks required and the request lacks, a string outside its enum, length or
pattern, a number outside its range, a list with too few or too many members, all end
in a client error and change nothing. moto skips nearly all of that, so a request that
AWS refuses can pass every test here. This module makes the emulator refuse it, with the
error AWS gives:

- EC2 (ec2 protocol): HTTP 400 `MissingParameter` ("The request must contain the
  parameter X") for a missing required member, `InvalidParameterValue` for any other
  violation (EC2 API Reference, "Error codes": "MissingParameter", "InvalidParameterValue").
- query protocol (Auto Scaling, IAM, STS, RDS, CloudFormation): HTTP 400 `ValidationError`
  with the framework's "1 validation error detected: Value null at 'x' failed to satisfy
  constraint: Member must not be null" text (each service's "Common Errors":
  ValidationError, "The input fails to satisfy the constraints specified by an AWS
  service").
- json protocol (Secrets Manager, CloudWatch Logs, CloudTrail, Service Quotas, SSM): HTTP
  400 `ValidationException` with the same text (CloudWatch Logs answers
  `InvalidParameterException`, as its API reference lists for malformed parameters).
- rest-json (Lambda, GuardDuty): HTTP 400 `InvalidParameterValueException` for Lambda
  (Lambda API Reference, "One of the parameters in the request is not valid"),
  `BadRequestException` for GuardDuty.

The models are the ones botocore ships in the emulator's own venv (the same models the
AWS CLI and SDKs are generated from). The request is read back into the model's shape
the way botocore's serializers wrote it (the Rust SDK's serializers follow the same
protocol rules), then walked: required members at every level of a structure that is
present, enums, string lengths (in characters), patterns (where Python's `re` can compile
the model's pattern), numeric ranges, list and map lengths.

Set NATD_EMU_VALIDATE=0 to switch it off (only to find out whether a failure is one of
these; no test does).
"""

import json
import os
import re
import urllib.parse

import botocore.session

ENABLED = os.environ.get("NATD_EMU_VALIDATE", "1") != "0"

# SigV4 signing names (the credential scope's service) -> botocore service names, for
# every service the project calls; others are looked up once in botocore's list.
_SIGNING = {
    "ec2": "ec2",
    "autoscaling": "autoscaling",
    "iam": "iam",
    "sts": "sts",
    "lambda": "lambda",
    "secretsmanager": "secretsmanager",
    "rds": "rds",
    "logs": "logs",
    "cloudtrail": "cloudtrail",
    "guardduty": "guardduty",
    "servicequotas": "service-quotas",
    "cloudformation": "cloudformation",
    "ssm": "ssm",
    "monitoring": "cloudwatch",
    "sns": "sns",
}

# Enums a service checks in its own code, or not at all, rather than in the model's
# validation: EC2 answers an unknown instance type with InvalidInstanceType
# (DescribeInstanceTypes) or "Invalid value ... for InstanceType" per operation, which
# moto models already; DescribeAccountAttributes takes every attribute it answers
# (vpc-max-elastic-ips, max-instances, ...), while the model's enum lists two.
_OWN_ENUM_ERRORS = {"InstanceType", "AccountAttributeName"}

_session = botocore.session.get_session()
_models = {}
_rest_ops = {}
_patterns = {}


class Invalid(Exception):
    """A request AWS would refuse: `missing` names the required member, else `message`."""

    def __init__(self, message, missing=None):
        super().__init__(message)
        self.message = message
        self.missing = missing


def _model(signing_name):
    if signing_name in _models:
        return _models[signing_name]
    name = _SIGNING.get(signing_name)
    model = None
    try:
        if name is None:
            for candidate in _session.get_available_services():
                m = _session.get_service_model(candidate)
                if m.signing_name == signing_name:
                    model = m
                    break
        else:
            model = _session.get_service_model(name)
    except Exception:  # an unknown service: moto answers it as it would
        model = None
    _models[signing_name] = model
    return model


def _signing_name(environ):
    auth = environ.get("HTTP_AUTHORIZATION", "")
    m = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request", auth)
    return m.group(1) if m else None


# --- reading a request back into its shape ------------------------------------------

_MISSING = object()


def _scalar(shape, raw, where):
    """A wire string as the model's scalar type."""
    t = shape.type_name
    try:
        if t in ("integer", "long"):
            return int(raw)
        if t in ("float", "double"):
            return float(raw)
        if t == "boolean":
            if raw not in ("true", "false"):
                raise ValueError(raw)
            return raw == "true"
    except ValueError:
        raise Invalid(f"Value '{raw}' at '{where}' is not a valid {t}")
    return raw


def _query_name(member_shape, member_name, ec2):
    s = member_shape.serialization
    if ec2:
        if "queryName" in s:
            return s["queryName"]
        if "name" in s:
            return s["name"][0].upper() + s["name"][1:]
        return member_name
    return s.get("name", member_name)


def _present(params, prefix):
    dot = prefix + "."
    return any(k == prefix or k.startswith(dot) for k in params)


def _indices(params, prefix):
    dot = prefix + "."
    found = set()
    for k in params:
        if k.startswith(dot):
            head = k[len(dot):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _from_query(shape, params, prefix, ec2):
    """The value the query/ec2 serializer wrote at `prefix`, or _MISSING."""
    t = shape.type_name
    if t == "structure":
        if prefix and not _present(params, prefix):
            return _MISSING
        out = {}
        for name, member in shape.members.items():
            key = _query_name(member, name, ec2)
            key = f"{prefix}.{key}" if prefix else key
            v = _from_query(member, params, key, ec2)
            if v is not _MISSING:
                out[name] = v
        return out
    if t == "list":
        if ec2 or shape.serialization.get("flattened"):
            item_prefix = prefix
            if not ec2 and shape.member.serialization.get("name"):
                item_prefix = ".".join(prefix.split(".")[:-1] + [shape.member.serialization["name"]])
        else:
            item_prefix = f"{prefix}.{shape.member.serialization.get('name', 'member')}"
        idx = _indices(params, item_prefix)
        if not idx:
            # The query protocol writes an empty list as "Prefix=".
            return [] if params.get(prefix) == "" else _MISSING
        return [_from_query(shape.member, params, f"{item_prefix}.{i}", ec2) for i in idx]
    if t == "map":
        base = prefix if shape.serialization.get("flattened") else f"{prefix}.entry"
        kname = shape.key.serialization.get("name", "key")
        vname = shape.value.serialization.get("name", "value")
        idx = _indices(params, base)
        if not idx:
            return _MISSING
        out = {}
        for i in idx:
            k = params.get(f"{base}.{i}.{kname}")
            v = _from_query(shape.value, params, f"{base}.{i}.{vname}", ec2)
            out[k] = v
        return out
    if prefix not in params:
        return _MISSING
    return _scalar(shape, params[prefix], prefix)


def _rest_table(service, model):
    if service in _rest_ops:
        return _rest_ops[service]
    table = []
    for name in model.operation_names:
        op = model.operation_model(name)
        uri = op.http.get("requestUri", "/")
        path, _, literal_query = uri.partition("?")
        rx = ""
        for part in re.split(r"(\{[^}]+\})", path):
            if part.startswith("{"):
                label = part[1:-1]
                greedy = label.endswith("+")
                label = label.rstrip("+")
                rx += f"(?P<{re.sub(r'[^A-Za-z0-9_]', '_', label)}>{'.+' if greedy else '[^/]+'})"
            else:
                rx += re.escape(part)
        needs = [q.split("=", 1)[0] for q in literal_query.split("&") if q]
        table.append((op.http.get("method", "POST"), re.compile(f"^{rx}/?$"), needs, len(path), op))
    # Longer literal paths first: the most specific operation wins.
    table.sort(key=lambda r: (-len(r[2]), -r[3]))
    _rest_ops[service] = table
    return table


def _rest_operation(model, method, path, query):
    for m, rx, needs, _, op in _rest_table(model.service_name, model):
        if m != method:
            continue
        hit = rx.match(path)
        if hit and all(n in query for n in needs):
            return op, hit
    return None, None


def _from_rest(op, hit, environ, body):
    shape = op.input_shape
    if shape is None:
        return None, {}
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    out = {}
    payload = shape.serialization.get("payload")
    for name, member in shape.members.items():
        loc = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if loc == "uri":
            v = hit.groupdict().get(re.sub(r"[^A-Za-z0-9_]", "_", wire))
            if v is not None:
                out[name] = _scalar(member, urllib.parse.unquote(v), name)
        elif loc == "querystring":
            if member.type_name == "list":
                if wire in query:
                    out[name] = [_scalar(member.member, v, name) for v in query[wire]]
            elif member.type_name != "map" and wire in query:
                out[name] = _scalar(member, query[wire][0], name)
        elif loc == "header":
            v = environ.get("HTTP_" + wire.upper().replace("-", "_"))
            if v is not None and member.type_name not in ("map", "list"):
                out[name] = _scalar(member, v, name)
        elif loc in ("headers", "statusCode"):
            continue
    if payload:
        member = shape.members[payload]
        if member.type_name == "structure" and body:
            out[payload] = json.loads(body)
        elif body:
            out[payload] = body
        return shape, out
    if body:
        doc = json.loads(body)
        for name, member in shape.members.items():
            if member.serialization.get("location"):
                continue
            wire = member.serialization.get("name", name)
            if wire in doc:
                out[name] = doc[wire]
    return shape, out


# --- walking the value against its shape --------------------------------------------


def _camel(name):
    return name[:1].lower() + name[1:]


def _pattern(p):
    if p not in _patterns:
        try:
            _patterns[p] = re.compile(p)
        except re.error:
            _patterns[p] = None
    return _patterns[p]


def _check(shape, value, where):
    meta = shape.metadata
    t = shape.type_name
    if t == "structure":
        if not isinstance(value, dict):
            raise Invalid(f"Value at '{where}' failed to satisfy constraint: Member must be a structure")
        for req in shape.required_members:
            if req not in value or value[req] is None:
                at = f"{where}.{_camel(req)}" if where else _camel(req)
                raise Invalid(
                    f"1 validation error detected: Value null at '{at}' failed to satisfy constraint: Member must not be null",
                    missing=f"{where}.{req}" if where else req,
                )
        for name, v in value.items():
            member = shape.members.get(name)
            if member is not None and v is not None:
                _check(member, v, f"{where}.{_camel(name)}" if where else _camel(name))
        return
    if t in ("list", "map"):
        n = len(value)
        if "min" in meta and n < meta["min"]:
            raise Invalid(
                f"1 validation error detected: Value at '{where}' failed to satisfy constraint: Member must have length greater than or equal to {meta['min']}"
            )
        if "max" in meta and n > meta["max"]:
            raise Invalid(
                f"1 validation error detected: Value at '{where}' failed to satisfy constraint: Member must have length less than or equal to {meta['max']}"
            )
        if t == "list":
            for i, v in enumerate(value, 1):
                if v is not _MISSING and v is not None:
                    _check(shape.member, v, f"{where}.{i}.member")
        else:
            for k, v in value.items():
                if v is not None:
                    _check(shape.value, v, f"{where}.{k}")
        return
    if t == "string":
        if not isinstance(value, str):
            return
        enum = getattr(shape, "enum", None) or meta.get("enum")
        if enum and value not in enum and shape.name not in _OWN_ENUM_ERRORS:
            listed = ", ".join(enum[:12]) + (", ..." if len(enum) > 12 else "")
            raise Invalid(
                f"1 validation error detected: Value '{value}' at '{where}' failed to satisfy constraint: Member must satisfy enum value set: [{listed}]"
            )
        if "min" in meta and len(value) < meta["min"]:
            raise Invalid(
                f"1 validation error detected: Value '{value}' at '{where}' failed to satisfy constraint: Member must have length greater than or equal to {meta['min']}"
            )
        if "max" in meta and len(value) > meta["max"]:
            raise Invalid(
                f"1 validation error detected: Value '{value[:64]}...' at '{where}' failed to satisfy constraint: Member must have length less than or equal to {meta['max']}"
            )
        if "pattern" in meta and value:
            rx = _pattern(meta["pattern"])
            if rx is not None and not rx.search(value):
                raise Invalid(
                    f"1 validation error detected: Value '{value[:64]}' at '{where}' failed to satisfy constraint: Member must satisfy regular expression pattern: {meta['pattern']}"
                )
        return
    if t in ("integer", "long", "float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if "min" in meta and value < meta["min"]:
            raise Invalid(
                f"1 validation error detected: Value '{value}' at '{where}' failed to satisfy constraint: Member must have value greater than or equal to {meta['min']}"
            )
        if "max" in meta and value > meta["max"]:
            raise Invalid(
                f"1 validation error detected: Value '{value}' at '{where}' failed to satisfy constraint: Member must have value less than or equal to {meta['max']}"
            )


# --- the answer AWS gives -------------------------------------------------------------


def _xml(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _ec2_error(e):
    if e.missing:
        code, msg = "MissingParameter", f"The request must contain the parameter {e.missing}"
    else:
        code, msg = "InvalidParameterValue", e.message
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{_xml(msg)}</Message></Error></Errors>"
        "<RequestID>00000000-0000-4000-8000-000000000000</RequestID></Response>"
    )
    return "400 Bad Request", "text/xml", body.encode(), code


def _query_error(e):
    body = (
        "<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code>"
        f"<Message>{_xml(e.message)}</Message></Error>"
        "<RequestId>00000000-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
    )
    return "400 Bad Request", "text/xml", body.encode(), "ValidationError"


def _json_error(service, e):
    # CloudWatch is query-compatible (awsQueryCompatible): it answers a constraint
    # violation with the query protocol's InvalidParameterValue, whichever protocol
    # carried the request.
    code = {"logs": "InvalidParameterException", "cloudwatch": "InvalidParameterValue"}.get(service, "ValidationException")
    body = json.dumps({"__type": code, "message": e.message})
    return "400 Bad Request", "application/x-amz-json-1.1", body.encode(), code


def _rest_error(service, e):
    code = "InvalidParameterValueException" if service == "lambda" else "BadRequestException"
    body = json.dumps({"Type": "User", "message": e.message, "Message": e.message})
    return "400 Bad Request", "application/json", body.encode(), code


def check(environ, body):
    """None when the request is valid (or not one this module can read), else
    (status, content type, body, error code) of AWS's answer."""
    if not ENABLED:
        return None
    signing = _signing_name(environ)
    if signing is None:
        return None
    model = _model(signing)
    if model is None:
        return None
    protocol = model.protocol
    try:
        if protocol in ("ec2", "query"):
            text = body.decode("utf-8", "replace")
            if environ.get("REQUEST_METHOD") == "GET" or not text:
                text = environ.get("QUERY_STRING", "") or text
            params = {k: v[0] for k, v in urllib.parse.parse_qs(text, keep_blank_values=True).items()}
            action = params.pop("Action", None)
            params.pop("Version", None)
            if action is None or action not in model.operation_names:
                return None
            shape = model.operation_model(action).input_shape
            if shape is None:
                return None
            value = _from_query(shape, params, "", protocol == "ec2")
            _check(shape, value, "")
        elif protocol == "json" or (environ.get("HTTP_X_AMZ_TARGET") and protocol != "rest-json"):
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            action = target.rsplit(".", 1)[-1]
            if action not in model.operation_names:
                return None
            shape = model.operation_model(action).input_shape
            if shape is None:
                return None
            doc = json.loads(body) if body.strip() else {}
            _check(shape, doc, "")
        elif protocol == "rest-json":
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            op, hit = _rest_operation(model, environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""), query)
            if op is None:
                return None
            shape, value = _from_rest(op, hit, environ, body)
            if shape is None:
                return None
            _check(shape, value, "")
        else:
            return None
    except Invalid as e:
        if protocol == "ec2":
            return _ec2_error(e)
        if protocol == "query":
            return _query_error(e)
        if protocol == "rest-json":
            return _rest_error(model.service_name, e)
        return _json_error(model.service_name, e)
    except (ValueError, KeyError):
        # A body this module cannot read as the model's shape: leave it to moto.
        return None
    return None
