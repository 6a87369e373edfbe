"""moto in server mode, extended with the AWS behaviours natd depends on that moto lacks.

Run as: python moto_natd.py [-H 127.0.0.1] [-p 0]   (the same arguments as moto_server)

Extensions, each matching documented AWS behaviour:
- CloudWatch speaks Smithy RPC v2 CBOR, as the AWS SDKs call it (moto reads JSON and
  query only; see "CloudWatch: Smithy RPC v2 CBOR"); PutMetricData enforces AWS's
  limits (1,000 metrics and 1 MB per request, 30 dimensions, time stamps within two
  weeks back and two hours ahead).
- GetMetricStatistics reads exactly the dimensions given, as AWS does (moto also
  counts points published with more dimensions).
- CloudWatch evaluates metric alarms, as AWS does once a period (moto never does):
  see "CloudWatch alarms are evaluated"; NATD_EMU_ALARM_EVAL_SECS (default 60).
- An outage can be limited to one service (`/natd-test/outage?...&service=monitoring`:
  CloudWatch alone refuses natd).
- Each request is applied atomically, as AWS applies it: of concurrent creates of one
  unique name (a launch template, natctl's stack lock) exactly one succeeds; moto alone
  checks and inserts in separate steps on its request threads.
- EC2 routes whose target instance is gone or stopped, whose ENI is deleted or detached,
  or whose NAT gateway is deleted read back with State=blackhole.
- Auto Scaling launch lifecycle hooks fire: an instance launched into a group with an
  autoscaling:EC2_INSTANCE_LAUNCHING hook waits in Pending:Wait until
  CompleteLifecycleAction (CONTINUE -> InService, ABANDON -> terminated and replaced).
  RecordLifecycleActionHeartbeat is accepted.
- SetInstanceHealth(Unhealthy) makes the group terminate and replace the instance.
- DeleteAutoScalingGroup terminates the group's instances (moto keeps them running when
  the group's minimum is above zero).
- DescribeNatGateways honours tag:KEY and tag-key filters (moto ignores them).
- NAT gateways take time, as on AWS (1-3 minutes there): `pending` for
  NATD_EMU_NAT_PENDING_SECS (default 3) after CreateNatGateway, then `available`;
  `deleting` for NATD_EMU_NAT_DELETING_SECS (default 2) after DeleteNatGateway, then
  `deleted`. CreateNatGateway honours ClientToken: the same token answers the gateway it
  created (AWS's idempotency) instead of creating another.
- Regional NAT gateways (CreateNatGateway AvailabilityMode=regional, AWS 2025-11; moto
  5.2.5 knows only zonal ones): created with VpcId and no subnet, public connectivity
  only, one AWS-provided address per AZ of the VPC (automatic mode); they take the same
  time as zonal ones and end `failed` (Gateway.NotAttached) in a VPC without an attached
  internet gateway. DescribeNatGateways answers AvailabilityMode for every gateway.
- EC2 and IAM reads are eventually consistent, as on AWS: within NATD_EMU_STALE_SECS of
  a change, natd's and natctl's DescribeAddresses/RouteTables/NetworkInterfaces/
  Instances and IAM Get*/List* answer the state from before it (see "Eventual
  consistency" below).
- IAM is eventually consistent, as on AWS: a role or instance profile is not usable for
  NATD_EMU_IAM_PROPAGATION_SECS (default 2) after it was created (a profile: after its
  role was added). CreateAutoScalingGroup with a launch template naming such a profile
  fails with AWS's ValidationError "... Invalid IAM Instance Profile name";
  UpdateFunctionConfiguration to such a role fails with InvalidParameterValueException
  "The role defined for the function cannot be assumed by Lambda."
- Lambda functions have states, as on AWS: `State: Pending` for
  NATD_EMU_LAMBDA_CREATE_SECS (default 2) after CreateFunction, and
  `LastUpdateStatus: InProgress` for NATD_EMU_LAMBDA_UPDATE_SECS (default 2) after
  UpdateFunctionConfiguration; an update meanwhile fails with ResourceConflictException.
  (CreateFunction itself does not check role propagation here: natctl never creates
  functions, and test fixtures create them right after their roles.)
- Lambda holds network interfaces, as on AWS: a function given a VPC configuration gets
  an ENI per subnet carrying its security groups ("AWS Lambda VPC ENI-..."); when its
  VPC configuration changes, the old ones are released only after
  NATD_EMU_LAMBDA_ENI_RELEASE_SECS (default 3; up to ~20 minutes on AWS), and until
  then DeleteSecurityGroup of a group they carry fails with DependencyViolation (as it
  does for any ENI still using the group).
- Network-interface tags at launch, as on AWS: RunInstances applies TagSpecifications of
  ResourceType network-interface to the instance's ENIs, and an Auto Scaling group
  applies its launch template's (moto applies neither), so a policy conditioned on the
  ENI's tags can be tested.
- Security groups as AWS sets them: a VPC's default group admits all traffic from its
  own members (moto leaves it without inbound rules), and an instance launched from a
  template whose primary network interface names groups and asks for a public IP gets
  those groups and a public IP (moto gives it the default group and no public IP); a
  terminated instance's primary network interface is deleted
  NATD_EMU_INSTANCE_ENI_RELEASE_SECS (default 2) after it (moto keeps it), its Elastic
  IPs disassociated (moto leaves them on the deleted interface), and until
  then holds its groups (DeleteSecurityGroup answers DependencyViolation); an interface
  endpoint's network interfaces have addresses of their subnets and the endpoint's
  groups (moto: random addresses, no groups), one per subnet as ModifyVpcEndpoint adds
  and removes subnets and changes groups (moto leaves the interfaces as they were).
- Elastic IPs on any private address, and addresses that move, as on AWS:
  AssociateAddress PrivateIpAddress puts the Elastic IP on that (secondary) address and
  leaves the primary's public IP alone; an Elastic IP moved away (AllowReassociation)
  leaves its old interface; AssignPrivateIpAddresses refuses an address another
  interface of the VPC holds (PrivateIpAddressInUse) unless AllowReassignment, which
  moves it with its Elastic IP; an unassigned address loses its Elastic IP (moto: every
  association on the primary address, the old interface keeps the public IP, addresses
  assigned twice).
- Elastic IPs as AWS gives them: AllocateAddress answers a unique address of a public
  pool (moto: a random 127.x.y.z loopback address, which no network routes), so the
  lab's internet gateway can translate it.
- Strictness, as on AWS: CreateAutoScalingGroup validates its launch template (an image
  that does not exist, an unknown instance type, or an image whose architecture the
  type does not run is a ValidationError), and RunInstances likewise
  (InvalidAMIID.NotFound, InvalidParameterValue); IAM role and instance profile names
  over 64 characters are a ValidationError; an interface endpoint with private DNS
  needs the VPC's enableDnsSupport and enableDnsHostnames, and only one per service
  and VPC may have it (InvalidParameter), at creation and when ModifyVpcEndpoint turns
  it on (moto ignores PrivateDnsEnabled there).
- Limits AWS enforces: IPv4 addresses per network interface and interfaces per
  instance by instance type (PrivateIpAddressLimitExceeded, AttachmentLimitExceeded),
  Elastic IPs per region (AddressLimitExceeded; vpc-max-elastic-ips, NATD_EMU_MAX_EIPS,
  default 5), NAT gateways per AZ (NatGatewayLimitExceeded, 5), interface endpoints per
  VPC (VpcEndpointLimitExceeded, 50); rules per security group moto enforces itself.
- Auto Scaling groups keep their InstanceMaintenancePolicy and answer it (moto ignores it).
- DescribeSubnets answers an IPv6 block's state as AWS does (moto nests a record there).
- Lambda's GetAccountSettings (moto has none): the region's concurrency quota
  (NATD_EMU_LAMBDA_CONCURRENCY, default 1,000, AWS's default "Concurrent executions"
  quota) and what is left unreserved; PutFunctionConcurrency keeps at least 100
  unreserved, as AWS does.
- IPv6 as AWS enforces it: a function's VpcConfig with Ipv6AllowedForDualStack needs
  every subnet dual-stack (InvalidParameterValueException), and its network interfaces
  then hold IPv6 addresses; a subnet's IPv6 block is not disassociated while an
  interface in it holds one, nor a VPC's while a subnet has a block within it
  (InvalidCidrBlock.InUse, "The vpc ... currently has a subnet within CIDR block ...");
  an IPv6 block associated with a VPC adds rules 101 (all IPv6 in and out) to its
  default network ACL.
- CreateLaunchTemplate honours ClientToken: a retry with the same token answers the
  template the first request created (moto ignores the token).
- Every request is checked against the service's API model before it is acted on, as
  AWS does (validate.py: required members at every level, enums, lengths, patterns,
  ranges, list lengths), and refused with AWS's error (MissingParameter /
  InvalidParameterValue, ValidationError, ValidationException,
  InvalidParameterValueException); GET /natd-test/refused lists what was refused.
- Every API call is recorded by operation name; GET /natd-test/calls answers the list
  (JSON; ?agent=app/natd only the calls whose user agent carries it), so tests and benchmarks can count calls and prove a run made no mutating one.
- GET /natd-test/cut?after=K makes every mutating call after the next K answer 503
  without being carried out, as if the client had died after its K-th change (the
  state is exactly what K changes made); GET /natd-test/cut?after=-1 ends that. Tests
  use it to cut a run off at each of its mutating calls in turn.
- IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT) evaluates Resource ARNs and
  StringEquals/StringLike conditions (with the ForAllValues:/ForAnyValue: set
  operators) on ec2:ResourceTag/*, autoscaling:ResourceTag/* and aws:TagKeys for the
  mutating calls natd makes, instead of only matching Resource "*".
- SigV4 signatures are checked over the request body as sent (moto re-encodes the
  parsed form, which rejects the Rust SDK's %20 for a space).
- GET /natd-test/outage?secs=N[&mode=refuse|hang][&agent=app/natd] makes the endpoint
  unavailable for N seconds to clients whose user agent carries `agent` (natd's SDK
  sends "app/natd"; the IMDS fixture and the tests' own clients are unaffected, as IMDS
  and other callers are during a regional EC2 API brownout): 503 at once, or after
  hanging until the outage ends.
"""

import fnmatch
import io
import json
import os
import sys
import threading
import time
import urllib.parse

from moto.autoscaling import models as asg_models
from moto.autoscaling import responses as asg_responses
from moto.core.responses import EmptyResult
from moto.ec2.models.route_tables import Route
from moto.iam import access_control

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"


# --- EC2: public addresses -------------------------------------------------------------

import random as _random  # noqa: E402

from moto.ec2.models import elastic_ip_addresses as _eip_models  # noqa: E402

_issued_eips = set()
_issued_eips_lock = threading.Lock()


def _random_public_eip():
    """An Elastic IP from a public pool (52.208.0.0/12 is an Amazon eu-west-1 range),
    never one already handed out by this emulator."""
    with _issued_eips_lock:
        while True:
            a = f"52.{_random.randint(208, 223)}.{_random.randint(0, 255)}.{_random.randint(1, 254)}"
            if a not in _issued_eips:
                _issued_eips.add(a)
                return a


_eip_models.random_ip = _random_public_eip


# --- EC2: Elastic IPs on secondary private addresses, and addresses that move ----------
#
# AWS (AssociateAddress, AssignPrivateIpAddresses, API Reference): an Elastic IP is
# associated with one private address of an interface (the primary unless
# PrivateIpAddress names a secondary one), and the other addresses keep theirs; moving
# an Elastic IP away from an interface takes its association off that interface; "when
# you move a secondary private IP address to another network interface, any Elastic IP
# address that is associated with the IP address is also moved" (AllowReassignment),
# while without AllowReassignment an address in use is refused. moto associates every
# Elastic IP with the primary address, leaves the old interface's public IP in place
# when an Elastic IP moves, and assigns secondary addresses without looking at other
# interfaces.

from moto.ec2.exceptions import EC2ClientError as _EC2ClientError  # noqa: E402
from moto.ec2.exceptions import ResourceAlreadyAssociatedError  # noqa: E402
from moto.ec2.models.elastic_ip_addresses import ElasticAddress, ElasticAddressBackend  # noqa: E402
from moto.ec2.responses import elastic_ip_addresses as _eip_responses  # noqa: E402
from moto.ec2.responses import elastic_network_interfaces as _eni_responses  # noqa: E402


def _eip_private_ip(self):
    ip = getattr(self, "_natd_private_ip", None)
    if ip and self.eni is not None:
        return ip
    return self.eni.private_ip_address if self.eni else None


ElasticAddress.private_ip_address = property(_eip_private_ip)


def _ip_entry(eni, ip):
    return next((d for d in eni.private_ip_addresses if d.get("PrivateIpAddress") == ip), None)


def _eip_unbind(eip):
    """Takes `eip`'s association off the private address it is on."""
    eni = eip.eni
    if eni is None:
        return
    ip = getattr(eip, "_natd_private_ip", None)
    if ip and ip != eni.private_ip_address:
        entry = _ip_entry(eni, ip)
        if entry is not None:
            entry.pop("Association", None)
    elif eni.public_ip == eip.public_ip:
        eni.public_ip = None
        if eni.instance is not None and eni.instance._state.name == "running":
            eni.check_auto_public_ip()
    eip._natd_private_ip = None


_orig_eip_associate = ElasticAddressBackend.associate_address


def _eip_associate(self, instance=None, eni=None, address=None, allocation_id=None, reassociate=False):
    eip = (self.address_by_ip([address]) if address else self.address_by_allocation([allocation_id]))[0]
    target = eni if eni is not None else (instance.nics[0] if instance is not None else None)
    if eip.eni is not None:
        if target is not None and eip.eni.id != target.id and not reassociate:
            raise ResourceAlreadyAssociatedError(eip.public_ip)
        _eip_unbind(eip)
    return _orig_eip_associate(
        self, instance=instance, eni=eni, address=address, allocation_id=allocation_id, reassociate=True
    )


ElasticAddressBackend.associate_address = _eip_associate

_orig_eip_disassociate = ElasticAddressBackend.disassociate_address


def _eip_disassociate(self, address=None, association_id=None):
    eip = (self.address_by_ip([address]) if address else self.address_by_association([association_id]))[0]
    ip = getattr(eip, "_natd_private_ip", None)
    if ip and eip.eni is not None and ip != eip.eni.private_ip_address:
        _eip_unbind(eip)
        eip.eni = None
        eip.instance = None
        eip.association_id = None
        return None
    return _orig_eip_disassociate(self, address=address, association_id=association_id)


ElasticAddressBackend.disassociate_address = _eip_disassociate

_orig_associate_response = _eip_responses.ElasticIPAddresses.associate_address


def _associate_response(self):
    ip = self._get_param("PrivateIpAddress")
    if not ip:
        return _orig_associate_response(self)
    backend = self.ec2_backend
    if self._get_param("InstanceId"):
        eni = backend.get_instance(self._get_param("InstanceId")).nics[0]
    else:
        eni = backend.get_network_interface(self._get_param("NetworkInterfaceId"))
    entry = _ip_entry(eni, ip)
    if entry is None:
        raise _EC2ClientError(
            "InvalidParameterValue",
            f"The private IP address {ip} is not assigned to {eni.id}",
        )
    if ip == eni.private_ip_address:
        return _orig_associate_response(self)
    kept = eni.public_ip
    result = _orig_associate_response(self)
    eip = (
        backend.address_by_allocation([self._get_param("AllocationId")])
        if self._get_param("AllocationId")
        else backend.address_by_ip([self._get_param("PublicIp")])
    )[0]
    # moto put the Elastic IP on the primary address: it belongs to the secondary one.
    eni.public_ip = kept
    eip._natd_private_ip = ip
    entry["Association"] = {
        "allocationId": eip.allocation_id,
        "associationId": eip.association_id,
        "ipOwnerId": backend.account_id,
        "publicIp": eip.public_ip,
    }
    return result


_eip_responses.ElasticIPAddresses.associate_address = _associate_response

_orig_assign_response = _eni_responses.ElasticNetworkInterfaces.assign_private_ip_addresses


def _assign_response(self):
    backend = self.ec2_backend
    eni = backend.get_network_interface(self._get_param("NetworkInterfaceId"))
    allow = str(self._get_param("AllowReassignment", False)).lower() == "true"
    moved = {}
    # AWS: a secondary address belongs to the interface's subnet; another subnet's
    # address is refused (InvalidParameterValue), moved or not.
    import ipaddress

    subnet = ipaddress.ip_network(eni.subnet.cidr_block)
    for ip in self._get_param("PrivateIpAddresses", []):
        if ipaddress.ip_address(ip) not in subnet:
            raise _EC2ClientError(
                "InvalidParameterValue",
                f"Address {ip} does not fall within the subnet's address range",
            )
    for ip in self._get_param("PrivateIpAddresses", []):
        for other in list(backend.enis.values()):
            if other is eni or other.subnet.vpc_id != eni.subnet.vpc_id:
                continue
            entry = _ip_entry(other, ip)
            if entry is None:
                continue
            if ip == other.private_ip_address or not allow:
                raise _EC2ClientError(
                    "PrivateIpAddressInUse",
                    f"The specified private IP address {ip} is already assigned to {other.id}",
                )
            other.private_ip_addresses.remove(entry)
            moved[ip] = entry.get("Association")
            for eip in backend.addresses:
                if getattr(eip, "_natd_private_ip", None) == ip and eip.eni is other:
                    eip.eni = eni
                    eip.instance = eni.instance
    before = {e.get("PrivateIpAddress") for e in eni.private_ip_addresses}
    result = _orig_assign_response(self)
    for ip, association in moved.items():
        entry = _ip_entry(eni, ip)
        if association and entry is not None:
            entry["Association"] = association
    # AWS answers with the addresses this call assigned (AssignedPrivateIpAddresses),
    # not every address of the interface as moto does.
    from moto.core.responses import ActionResult

    assigned = [
        {"PrivateIpAddress": e.get("PrivateIpAddress")}
        for e in eni.private_ip_addresses
        if e.get("PrivateIpAddress") not in before
    ]
    return ActionResult({"NetworkInterfaceId": eni.id, "AssignedPrivateIpAddresses": assigned})


_eni_responses.ElasticNetworkInterfaces.assign_private_ip_addresses = _assign_response

_orig_unassign_response = _eni_responses.ElasticNetworkInterfaces.unassign_private_ip_addresses


def _unassign_response(self):
    # An Elastic IP on an address that goes is disassociated with it.
    backend = self.ec2_backend
    eni = backend.get_network_interface(self._get_param("NetworkInterfaceId"))
    for ip in self._get_param("PrivateIpAddresses", []):
        for eip in backend.addresses:
            if getattr(eip, "_natd_private_ip", None) == ip and eip.eni is eni:
                _eip_unbind(eip)
                eip.eni = None
                eip.instance = None
                eip.association_id = None
    return _orig_unassign_response(self)


_eni_responses.ElasticNetworkInterfaces.unassign_private_ip_addresses = _unassign_response


# --- EC2: private addresses the subnet can give --------------------------------------
#
# AWS (VPC User Guide, "Subnet CIDR blocks"): the first four addresses of a subnet and
# its last are reserved (network, VPC router, DNS, future use, broadcast) and are never
# given to an interface; an address is given to one interface at a time; a request the
# subnet cannot satisfy fails with InsufficientFreeAddressesInSubnet, and an address in
# the reserved range named explicitly is refused (InvalidParameterValue). moto picks
# secondary addresses and the primary of a new interface at random over the whole CIDR,
# reserved and used addresses included (a secondary address could be the VPC router's
# or another instance's), and its instance allocator does not see interface addresses.
# A Lambda function's interfaces take free addresses the same way.

import ipaddress as _ipaddress  # noqa: E402
import random as _random  # noqa: E402

from moto.ec2.models.elastic_network_interfaces import NetworkInterfaceBackend  # noqa: E402


def _reserved_range(subnet):
    net = _ipaddress.ip_network(subnet.cidr_block)
    return {str(net.network_address + k) for k in range(4)} | {str(net.broadcast_address)}


def _addresses_in_use(backend, subnet):
    # Explicit subnet CIDR reservations are the owner's to assign; AWS assigns none of
    # their addresses automatically (VPC User Guide, "Subnet CIDR reservations").
    used = set(subnet._subnet_ips) | {str(ip) for ip in subnet._reserved_ips}
    for eni in backend.enis.values():
        if getattr(eni.subnet, "id", None) != subnet.id:
            continue
        used.add(eni.private_ip_address)
        used.update(d.get("PrivateIpAddress") for d in eni.private_ip_addresses)
    return used


def _take(subnet, ips, owner):
    """Marks `ips` used in `subnet`, so that instances launched later do not get them."""
    for ip in ips:
        subnet._subnet_ips[ip] = owner
        subnet._unused_ips.discard(ip)


def _free_addresses(backend, subnet, count):
    taken = _addresses_in_use(backend, subnet) | _reserved_range(subnet)
    net = _ipaddress.ip_network(subnet.cidr_block)
    free = [str(h) for h in net.hosts() if str(h) not in taken]
    if len(free) < count:
        raise _EC2ClientError(
            "InsufficientFreeAddressesInSubnet",
            f"The specified subnet {subnet.id} has {len(free)} free address(es); {count} requested.",
        )
    return _random.sample(free, count)


def _refuse_reserved(subnet, ips):
    reserved = _reserved_range(subnet)
    for ip in ips:
        if ip in reserved:
            raise _EC2ClientError(
                "InvalidParameterValue",
                f"Address {ip} is in subnet's reserved address range",
            )


_orig_assign_model = NetworkInterfaceBackend.assign_private_ip_addresses


def _assign_model(self, eni_id, private_ip_addresses=None, secondary_ips_count=None):
    eni = self.get_network_interface(eni_id)
    if private_ip_addresses:
        _refuse_reserved(eni.subnet, private_ip_addresses)
    elif secondary_ips_count:
        private_ip_addresses = _free_addresses(self, eni.subnet, int(secondary_ips_count))
    result = _orig_assign_model(self, eni_id, private_ip_addresses=private_ip_addresses)
    _take(eni.subnet, private_ip_addresses or [], eni)
    return result


NetworkInterfaceBackend.assign_private_ip_addresses = _assign_model

_orig_unassign_model = NetworkInterfaceBackend.unassign_private_ip_addresses


def _unassign_model(self, eni_id=None, private_ip_address=None):
    eni = self.get_network_interface(eni_id)
    result = _orig_unassign_model(self, eni_id=eni_id, private_ip_address=private_ip_address)
    for ip in private_ip_address or []:
        if eni.subnet._subnet_ips.get(ip) is eni:
            eni.subnet.del_subnet_ip(ip)
    return result


NetworkInterfaceBackend.unassign_private_ip_addresses = _unassign_model

_orig_create_eni = NetworkInterfaceBackend.create_network_interface


def _create_eni(self, subnet, private_ip_address, private_ip_addresses=None, *args, **kwargs):
    if isinstance(subnet, str):
        subnet = self.get_subnet(subnet)
    named = private_ip_address if isinstance(private_ip_address, list) else [private_ip_address]
    named = [ip for ip in named if ip]
    named += [
        (d.get("PrivateIpAddress") if isinstance(d, dict) else d) for d in (private_ip_addresses or [])
    ]
    _refuse_reserved(subnet, named)
    if not named:
        private_ip_address = _free_addresses(self, subnet, 1)[0]
    secondary = kwargs.pop("secondary_ips_count", None)
    eni = _orig_create_eni(self, subnet, private_ip_address, private_ip_addresses, *args, **kwargs)
    _take(subnet, [d.get("PrivateIpAddress") for d in eni.private_ip_addresses], eni)
    if secondary:
        self.assign_private_ip_addresses(eni.id, secondary_ips_count=int(secondary))
    return eni


NetworkInterfaceBackend.create_network_interface = _create_eni


# --- EC2: blackhole routes -------------------------------------------------------------

def _route_state(self):
    backend = self.route_table.ec2_backend
    if self.instance is not None:
        if self.instance.state in ("terminated", "stopped", "shutting-down", "stopping"):
            return "blackhole"
    if self.interface is not None:
        eni = backend.enis.get(self.interface.id)
        if eni is None or eni.instance is None:
            return "blackhole"
        if eni.instance.state in ("terminated", "stopped", "shutting-down", "stopping"):
            return "blackhole"
    if self.nat_gateway is not None:
        if self.nat_gateway.id not in backend.nat_gateways or self.nat_gateway.state in (
            "deleted",
            "deleting",
            "failed",
        ):
            return "blackhole"
    return "active"


Route.state = property(_route_state)


# --- EC2: tag filters on NAT gateways -------------------------------------------------

from moto.ec2.models.nat_gateways import NatGatewayBackend  # noqa: E402

_orig_describe_nat_gateways = NatGatewayBackend.describe_nat_gateways


def _describe_nat_gateways(self, filters, nat_gateway_ids):
    found = _orig_describe_nat_gateways(self, filters, nat_gateway_ids)
    for name, values in (filters or {}).items():
        if name.startswith("tag:"):
            found = [g for g in found if g.get_filter_value(name) in values]
        elif name == "tag-key":
            found = [g for g in found if any(k in values for k in g.get_filter_value(name))]
    return found


NatGatewayBackend.describe_nat_gateways = _describe_nat_gateways


# --- EC2: NAT gateways take time; ClientToken -----------------------------------------

import os  # noqa: E402
import time  # noqa: E402

from moto.ec2.models.nat_gateways import NatGateway  # noqa: E402
from moto.ec2.responses import nat_gateways as nat_responses  # noqa: E402

NAT_PENDING_SECS = float(os.environ.get("NATD_EMU_NAT_PENDING_SECS", "3"))
NAT_DELETING_SECS = float(os.environ.get("NATD_EMU_NAT_DELETING_SECS", "2"))


def _nat_state_get(self):
    now = time.monotonic()
    deleted_at = getattr(self, "_natd_deleted_at", None)
    if deleted_at is not None:
        return "deleting" if now < deleted_at + NAT_DELETING_SECS else "deleted"
    created_at = getattr(self, "_natd_created_at", now)
    return "pending" if now < created_at + NAT_PENDING_SECS else "available"


def _nat_state_set(self, value):
    if value == "deleted":
        self._natd_deleted_at = time.monotonic()
    elif not hasattr(self, "_natd_created_at"):
        self._natd_created_at = time.monotonic()


NatGateway.state = property(_nat_state_get, _nat_state_set)

_nat_tokens = {}
_orig_create_nat_gateway = nat_responses.NatGateways.create_nat_gateway


def _create_nat_gateway(self):
    token = self._get_param("ClientToken")
    key = (self.current_account, self.region, token)
    if token and key in _nat_tokens:
        gw = self.ec2_backend.nat_gateways.get(_nat_tokens[key])
        if gw is not None:
            from moto.core.responses import ActionResult

            return ActionResult({"NatGateway": gw, "ClientToken": token})
    result = _orig_create_nat_gateway(self)
    if token:
        _nat_tokens[key] = result.result["NatGateway"].id
    return result


nat_responses.NatGateways.create_nat_gateway = _create_nat_gateway


# --- EC2: regional NAT gateways --------------------------------------------------------

from moto.ec2 import exceptions as ec2_exceptions  # noqa: E402
from moto.ec2.utils import random_nat_gateway_id, random_public_ip  # noqa: E402
from moto.core.utils import utcnow  # noqa: E402

NatGateway.availability_mode = "zonal"


def _regional_state_get(self):
    state = _nat_state_get(self)
    if state == "available" and getattr(self, "_natd_failure", None):
        return "failed"
    return state


def _regional_failure_code(self):
    failure = getattr(self, "_natd_failure", None)
    return failure[0] if failure and self.state == "failed" else None


def _regional_failure_message(self):
    failure = getattr(self, "_natd_failure", None)
    return failure[1] if failure and self.state == "failed" else None


NatGateway.state = property(_regional_state_get, _nat_state_set)
NatGateway.failure_code = property(_regional_failure_code)
NatGateway.failure_message = property(_regional_failure_message)


def _create_regional_nat_gateway(self):
    """CreateNatGateway with AvailabilityMode=regional (AWS, 2025-11): the gateway
    belongs to a VPC, not a subnet (SubnetId is refused, VpcId required); it has public
    connectivity only; in automatic mode (no AvailabilityZoneAddresses) AWS provides one
    public address in each AZ where the VPC has subnets. Like a zonal public gateway in a
    VPC without an attached internet gateway, it ends `failed` with Gateway.NotAttached.
    """
    backend = self.ec2_backend
    vpc_id = self._get_param("VpcId")
    if self._get_param("SubnetId"):
        raise ec2_exceptions.InvalidParameterCombination(
            "A regional NAT gateway is created in a VPC: SubnetId cannot be specified"
        )
    if not vpc_id:
        raise ec2_exceptions.MissingParameterError("VpcId")
    if (self._get_param("ConnectivityType") or "public") != "public":
        raise ec2_exceptions.InvalidParameterCombination(
            "Regional NAT gateways support public connectivity only"
        )
    if self._get_param("AllocationId"):
        raise ec2_exceptions.InvalidParameterCombination(
            "A regional NAT gateway takes its addresses in AvailabilityZoneAddresses"
        )
    backend.get_vpc(vpc_id)  # InvalidVpcID.NotFound
    gw = NatGateway.__new__(NatGateway)
    gw.id = random_nat_gateway_id()
    gw.ec2_backend = backend
    gw.subnet_id = None
    gw.vpc_id = vpc_id
    gw.connectivity_type = "public"
    gw.availability_mode = "regional"
    gw.auto_provision_zones = "enabled"
    gw.auto_scaling_ips = "enabled"
    gw.private_ip = None
    gw._created_at = utcnow()
    gw._natd_created_at = time.monotonic()
    attached = [
        igw for igw in backend.internet_gateways.values() if igw.vpc and igw.vpc.id == vpc_id
    ]
    if not attached:
        gw._natd_failure = (
            "Gateway.NotAttached",
            f"Network {vpc_id} has no Internet gateway attached",
        )
    azs = sorted(
        {
            s.availability_zone
            for per_zone in backend.subnets.values()
            for s in per_zone.values()
            if s.vpc_id == vpc_id
        }
    )
    gw.address_set = [
        {
            "publicIp": random_public_ip(),
            "availabilityZone": az,
            "isPrimary": True,
            "status": "succeeded",
        }
        for az in azs
    ]
    from moto.ec2.utils import add_tag_specification

    gw.add_tags(add_tag_specification(self._get_param("TagSpecifications", [])))
    backend.nat_gateways[gw.id] = gw
    from moto.core.responses import ActionResult

    return ActionResult({"NatGateway": gw, "ClientToken": self._get_param("ClientToken")})


_zonal_create_nat_gateway = nat_responses.NatGateways.create_nat_gateway


def _create_nat_gateway_any_mode(self):
    if (self._get_param("AvailabilityMode") or "zonal") != "regional":
        return _zonal_create_nat_gateway(self)
    token = self._get_param("ClientToken")
    key = (self.current_account, self.region, token)
    if token and key in _nat_tokens:
        gw = self.ec2_backend.nat_gateways.get(_nat_tokens[key])
        if gw is not None:
            from moto.core.responses import ActionResult

            return ActionResult({"NatGateway": gw, "ClientToken": token})
    result = _create_regional_nat_gateway(self)
    if token:
        _nat_tokens[key] = result.result["NatGateway"].id
    return result


nat_responses.NatGateways.create_nat_gateway = _create_nat_gateway_any_mode


# --- Auto Scaling: lifecycle hooks and health ----------------------------------------

def _launch_hooks(group):
    return [
        h
        for h in group.autoscaling_backend.lifecycle_hooks.values()
        if h.auto_scaling_group_name == group.name and h.lifecycle_transition == LAUNCHING
    ]


_orig_replace = asg_models.FakeAutoScalingGroup.replace_autoscaling_group_instances


def _replace(self, count_needed, propagated_tags):
    before = {s.instance.id for s in self.instance_states}
    _orig_replace(self, count_needed, propagated_tags)
    template = getattr(self, "ec2_launch_template", None)
    if template is not None:
        data = template.default_version().data or {}
        tags = {}
        for spec in data.get("TagSpecifications") or []:
            if spec.get("ResourceType") == "network-interface":
                tags.update({t["Key"]: t["Value"] for t in spec.get("Tags", [])})
        new = [st.instance for st in self.instance_states if st.instance.id not in before]
        if tags and new:
            self.ec2_backend.create_tags(
                [nic.id for i in new for nic in getattr(i, "nics", {}).values()], tags
            )
    if _launch_hooks(self):
        for state in self.instance_states:
            if state.instance.id not in before:
                state.lifecycle_state = "Pending:Wait"


asg_models.FakeAutoScalingGroup.replace_autoscaling_group_instances = _replace


def _notify_terminate(self, instance_ids):
    # Replace every instance the group loses, Pending:Wait ones included (moto counts
    # only InService ones).
    for group in list(self.autoscaling_groups.values()):
        lost = [s for s in group.instance_states if s.instance.id in instance_ids]
        group.instance_states = [s for s in group.instance_states if s.instance.id not in instance_ids]
        if lost:
            missing = (group.desired_capacity or 0) - len(group.instance_states)
            if missing > 0:
                group.replace_autoscaling_group_instances(missing, group.get_propagated_tags())


asg_models.AutoScalingBackend.notify_terminate_instances = _notify_terminate


def _state_of(backend, instance_id):
    for group in backend.autoscaling_groups.values():
        for state in group.instance_states:
            if state.instance.id == instance_id:
                return group, state
    return None, None


def _terminate_and_replace(backend, instance_id):
    backend.ec2_backend.terminate_instances([instance_id])
    backend.notify_terminate_instances([instance_id])


def _complete_lifecycle_action(self):
    backend = self.autoscaling_backend
    group_name = self._get_param("AutoScalingGroupName")
    hook_name = self._get_param("LifecycleHookName")
    instance_id = self._get_param("InstanceId")
    result = self._get_param("LifecycleActionResult")
    if result not in ("CONTINUE", "ABANDON"):
        raise ValueError("LifecycleActionResult must be CONTINUE or ABANDON")
    if f"{group_name}_{hook_name}" not in backend.lifecycle_hooks:
        raise ValueError(f"No lifecycle hook {hook_name} on group {group_name}")
    group, state = _state_of(backend, instance_id)
    if state is None or group.name != group_name or state.lifecycle_state != "Pending:Wait":
        raise ValueError(f"No active Lifecycle Action found with instance ID {instance_id}")
    completions = getattr(backend, "natd_completions", [])
    completions.append({"group": group_name, "hook": hook_name, "instance": instance_id, "result": result})
    backend.natd_completions = completions
    if result == "CONTINUE":
        state.lifecycle_state = "InService"
    else:
        _terminate_and_replace(backend, instance_id)
    return EmptyResult()


def _heartbeat(self):
    return EmptyResult()


asg_responses.AutoScalingResponse.complete_lifecycle_action = _complete_lifecycle_action
asg_responses.AutoScalingResponse.record_lifecycle_action_heartbeat = _heartbeat

_orig_set_health = asg_models.AutoScalingBackend.set_instance_health


def _set_instance_health(self, instance_id, health_status):
    _orig_set_health(self, instance_id, health_status)
    if health_status == "Unhealthy":
        _terminate_and_replace(self, instance_id)


asg_models.AutoScalingBackend.set_instance_health = _set_instance_health

_orig_delete_group = asg_models.AutoScalingBackend.delete_auto_scaling_group


def _delete_group(self, group_name):
    group = self.autoscaling_groups.get(group_name)
    ids = [s.instance.id for s in group.instance_states] if group else []
    _orig_delete_group(self, group_name)
    alive = [i for i in ids if self.ec2_backend.get_instance(i).state != "terminated"]
    if alive:
        self.ec2_backend.terminate_instances(alive)


asg_models.AutoScalingBackend.delete_auto_scaling_group = _delete_group


# --- IAM propagation; Lambda states ----------------------------------------------------

from moto.awslambda import models as lambda_models  # noqa: E402
from moto.awslambda.exceptions import InvalidParameterValueException, LambdaClientError  # noqa: E402
from moto.autoscaling.exceptions import ValidationError as AsgValidationError  # noqa: E402
from moto.iam import models as iam_models  # noqa: E402

IAM_PROPAGATION_SECS = float(os.environ.get("NATD_EMU_IAM_PROPAGATION_SECS", "2"))
LAMBDA_CREATE_SECS = float(os.environ.get("NATD_EMU_LAMBDA_CREATE_SECS", "2"))
LAMBDA_UPDATE_SECS = float(os.environ.get("NATD_EMU_LAMBDA_UPDATE_SECS", "2"))

_orig_create_role = iam_models.IAMBackend.create_role
_orig_create_profile = iam_models.IAMBackend.create_instance_profile
_orig_add_role_to_profile = iam_models.IAMBackend.add_role_to_instance_profile


def _create_role(self, *args, **kwargs):
    role = _orig_create_role(self, *args, **kwargs)
    role._natd_usable_at = time.monotonic() + IAM_PROPAGATION_SECS
    return role


def _create_profile(self, *args, **kwargs):
    profile = _orig_create_profile(self, *args, **kwargs)
    profile._natd_usable_at = time.monotonic() + IAM_PROPAGATION_SECS
    return profile


def _add_role_to_profile(self, profile_name, role_name):
    _orig_add_role_to_profile(self, profile_name, role_name)
    self.get_instance_profile(profile_name)._natd_usable_at = time.monotonic() + IAM_PROPAGATION_SECS


iam_models.IAMBackend.create_role = _create_role
iam_models.IAMBackend.create_instance_profile = _create_profile
iam_models.IAMBackend.add_role_to_instance_profile = _add_role_to_profile


def _fresh(thing):
    return thing is not None and time.monotonic() < getattr(thing, "_natd_usable_at", 0)


def _iam(account):
    return iam_models.iam_backends[account]["global"]


def _profile_named(account, name_or_arn):
    name = (name_or_arn or "").rsplit("/", 1)[-1]
    for p in _iam(account).instance_profiles.values():
        if p.name == name:
            return p
    return None


_orig_create_asg = asg_models.AutoScalingBackend.create_auto_scaling_group


def _create_asg(self, *args, **kwargs):
    lt = kwargs.get("launch_template") or {}
    ec2 = self.ec2_backend
    template = None
    tid = lt.get("launch_template_id") or lt.get("LaunchTemplateId")
    tname = lt.get("launch_template_name") or lt.get("LaunchTemplateName")
    try:
        if tid:
            template = ec2.get_launch_template(tid)
        elif tname:
            template = ec2.get_launch_template_by_name(tname)
    except Exception:
        template = None
    if template is not None:
        data = template.default_version().data or {}
        spec = data.get("IamInstanceProfile") or {}
        name = spec.get("Name") or spec.get("Arn")
        if name and _fresh(_profile_named(self.account_id, name)):
            raise AsgValidationError(
                f"You must use a valid fully-formed launch template. Value ({name}) for parameter "
                "iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
            )
    return _orig_create_asg(self, *args, **kwargs)


asg_models.AutoScalingBackend.create_auto_scaling_group = _create_asg


class _ResourceConflict(LambdaClientError):
    code = 409

    def __init__(self, arn):
        super().__init__(
            "ResourceConflictException",
            f"The operation cannot be performed at this time. An update is in progress for resource: {arn}",
        )


_orig_lambda_init = lambda_models.LambdaFunction.__init__
_orig_get_configuration = lambda_models.LambdaFunction.get_configuration
_orig_update_configuration = lambda_models.LambdaFunction.update_configuration


def _lambda_init(self, *args, **kwargs):
    _orig_lambda_init(self, *args, **kwargs)
    self._natd_busy_until = time.monotonic() + LAMBDA_CREATE_SECS
    self._natd_creating = True


def _get_configuration(self, on_create=False):
    config = _orig_get_configuration(self, on_create)
    busy = time.monotonic() < getattr(self, "_natd_busy_until", 0)
    if busy and getattr(self, "_natd_creating", False):
        config["State"] = "Pending"
        config["StateReason"] = "The function is being created."
        config["StateReasonCode"] = "Creating"
    elif busy:
        config["LastUpdateStatus"] = "InProgress"
        config["LastUpdateStatusReason"] = "The function is being updated."
        config["LastUpdateStatusReasonCode"] = "InProgress"
    return config


def _update_configuration(self, config_updates):
    if time.monotonic() < getattr(self, "_natd_busy_until", 0):
        raise _ResourceConflict(self.function_arn)
    role = config_updates.get("Role")
    if role and role != self.role:
        name = role.rsplit("/", 1)[-1]
        found = _iam(self.account_id).roles
        target = next((r for r in found.values() if r.name == name), None)
        if _fresh(target):
            raise InvalidParameterValueException("The role defined for the function cannot be assumed by Lambda.")
    self._natd_busy_until = time.monotonic() + LAMBDA_UPDATE_SECS
    self._natd_creating = False
    return _orig_update_configuration(self, config_updates)


lambda_models.LambdaFunction.__init__ = _lambda_init
lambda_models.LambdaFunction.get_configuration = _get_configuration
lambda_models.LambdaFunction.update_configuration = _update_configuration


# --- Strictness: images, instance types, IAM names, private DNS ------------------------

from moto.ec2.exceptions import EC2ClientError  # noqa: E402
from moto.ec2.models import instances as ec2_instances  # noqa: E402
from moto.ec2.models.instance_types import INSTANCE_TYPES  # noqa: E402
from moto.ec2.models.vpcs import VPCBackend  # noqa: E402
from moto.iam.exceptions import ValidationError as IamValidationError  # noqa: E402


def _launch_problem(ec2, image_id, instance_type):
    """Why EC2 would refuse to launch this image on this type, or None."""
    if not image_id:
        return None
    amis = getattr(ec2, "amis", {})
    image = amis.get(image_id)
    if image is None:
        return ("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
    if instance_type:
        spec = INSTANCE_TYPES.get(instance_type)
        if spec is None:
            return ("InvalidParameterValue", f"Invalid value '{instance_type}' for InstanceType.")
        archs = spec.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
        if archs and image.architecture not in archs:
            return (
                "InvalidParameterValue",
                f"The architecture '{'/'.join(archs)}' of the specified instance type does not match "
                f"the architecture '{image.architecture}' of the specified AMI.",
            )
    return None


_orig_create_asg_strict = asg_models.AutoScalingBackend.create_auto_scaling_group


def _create_asg_strict(self, *args, **kwargs):
    lt = kwargs.get("launch_template") or {}
    tid = lt.get("LaunchTemplateId") or lt.get("launch_template_id")
    tname = lt.get("LaunchTemplateName") or lt.get("launch_template_name")
    template = None
    try:
        if tid:
            template = self.ec2_backend.get_launch_template(tid)
        elif tname:
            template = self.ec2_backend.get_launch_template_by_name(tname)
    except Exception:
        template = None
    if template is not None:
        data = template.default_version().data or {}
        problem = _launch_problem(self.ec2_backend, data.get("ImageId"), data.get("InstanceType"))
        if problem:
            raise AsgValidationError(f"You must use a valid fully-formed launch template. {problem[1]}")
    return _orig_create_asg_strict(self, *args, **kwargs)


asg_models.AutoScalingBackend.create_auto_scaling_group = _create_asg_strict

_orig_run_instances = ec2_instances.InstanceBackend.run_instances


def _tag_enis(ec2, instances, tags):
    if not tags:
        return
    ids = [nic.id for i in instances for nic in getattr(i, "nics", {}).values()]
    if ids:
        ec2.create_tags(ids, tags)


def _run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    problem = _launch_problem(self, image_id, kwargs.get("instance_type"))
    if problem:
        raise EC2ClientError(problem[0], problem[1])
    reservation = _orig_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)
    _tag_enis(self, reservation.instances, (kwargs.get("tags") or {}).get("network-interface"))
    return reservation


ec2_instances.InstanceBackend.run_instances = _run_instances


def _iam_name_limit(original, key):
    def check(self, *args, **kwargs):
        name = kwargs.get(key) if key in kwargs else (args[0] if args else "")
        if name and len(name) > 64:
            raise IamValidationError(
                f"1 validation error detected: Value '{name}' at '{key}' failed to satisfy constraint: "
                "Member must have length less than or equal to 64"
            )
        return original(self, *args, **kwargs)

    return check


iam_models.IAMBackend.create_role = _iam_name_limit(iam_models.IAMBackend.create_role, "role_name")
iam_models.IAMBackend.create_instance_profile = _iam_name_limit(
    iam_models.IAMBackend.create_instance_profile, "name"
)

_orig_create_vpc_endpoint = VPCBackend.create_vpc_endpoint


def _create_vpc_endpoint(self, vpc_id, service_name, endpoint_type, *args, **kwargs):
    if kwargs.get("private_dns_enabled") and (endpoint_type or "").lower() == "interface":
        vpc = self.get_vpc(vpc_id)
        if not (vpc.enable_dns_support and vpc.enable_dns_hostnames):
            raise EC2ClientError(
                "InvalidParameter",
                f"Enabling private DNS requires both enableDnsSupport and enableDnsHostnames VPC attributes set to true for {vpc_id}",
            )
        for e in self.vpc_end_points.values():
            if (
                e.vpc_id == vpc_id
                and e.service_name == service_name
                and e.private_dns_enabled
                and str(getattr(e, "state", "available")).lower() not in ("deleted", "deleting")
            ):
                raise EC2ClientError(
                    "InvalidParameter",
                    f"private-dns-enabled cannot be set because there is already a conflicting DNS domain for {service_name} in the VPC {vpc_id}",
                )
    return _orig_create_vpc_endpoint(self, vpc_id, service_name, endpoint_type, *args, **kwargs)


VPCBackend.create_vpc_endpoint = _create_vpc_endpoint

from moto.ec2.responses import vpcs as _vpc_responses  # noqa: E402

_orig_modify_vpc_endpoint = _vpc_responses.VPCs.modify_vpc_endpoint


def _modify_vpc_endpoint(self):
    """ModifyVpcEndpoint PrivateDnsEnabled, which moto ignores: turning it on has the
    same conditions as at creation (the VPC's DNS support and hostnames, no other
    endpoint of the service in the VPC with private DNS)."""
    wanted = self._get_param("PrivateDnsEnabled")
    if wanted is not None:
        on = str(wanted).lower() == "true"
        endpoint_id = self._get_param("VpcEndpointId")
        endpoint = self.ec2_backend.describe_vpc_endpoints(vpc_end_point_ids=[endpoint_id])[0]
        if on and not endpoint.private_dns_enabled:
            vpc = self.ec2_backend.get_vpc(endpoint.vpc_id)
            if not (vpc.enable_dns_support and vpc.enable_dns_hostnames):
                raise EC2ClientError(
                    "InvalidParameter",
                    f"Enabling private DNS requires both enableDnsSupport and enableDnsHostnames VPC attributes set to true for {endpoint.vpc_id}",
                )
            for e in self.ec2_backend.vpc_end_points.values():
                if (
                    e is not endpoint
                    and e.vpc_id == endpoint.vpc_id
                    and e.service_name == endpoint.service_name
                    and e.private_dns_enabled
                ):
                    raise EC2ClientError(
                        "InvalidParameter",
                        f"private-dns-enabled cannot be set because there is already a conflicting DNS domain for {endpoint.service_name} in the VPC {endpoint.vpc_id}",
                    )
        endpoint.private_dns_enabled = on
    return _orig_modify_vpc_endpoint(self)


_vpc_responses.VPCs.modify_vpc_endpoint = _modify_vpc_endpoint


# --- Lambda's network interfaces; security groups in use -----------------------------

from moto.ec2.exceptions import DependencyViolationError  # noqa: E402
from moto.ec2.models import ec2_backends  # noqa: E402
from moto.ec2.models.elastic_network_interfaces import NetworkInterfaceBackend  # noqa: E402
from moto.ec2.models.security_groups import SecurityGroupBackend  # noqa: E402

LAMBDA_ENI_RELEASE_SECS = float(os.environ.get("NATD_EMU_LAMBDA_ENI_RELEASE_SECS", "3"))
_eni_release_at = {}


def _reap_lambda_enis(ec2):
    now = time.monotonic()
    for eni_id, at in list(_eni_release_at.items()):
        if at <= now and eni_id in ec2.enis:
            # Its Elastic IPs are disassociated and stay allocated, as on EC2 ("If you
            # terminate an instance, its Elastic IP address is disassociated", EC2 User
            # Guide, Elastic IP addresses); moto keeps them on the deleted interface.
            for eip in list(ec2.addresses):
                if eip.eni is not None and eip.eni.id == eni_id and eip.association_id:
                    ec2.disassociate_address(association_id=eip.association_id)
            ec2.delete_network_interface(eni_id)
            del _eni_release_at[eni_id]


_update_configuration_enis_inner = lambda_models.LambdaFunction.update_configuration


def _update_configuration_enis(self, config_updates):
    result = _update_configuration_enis_inner(self, config_updates)
    vpc = config_updates.get("VpcConfig")
    if vpc is not None:
        ec2 = ec2_backends[self.account_id][self.region]
        wanted = (tuple(sorted(vpc.get("SubnetIds") or [])), tuple(sorted(vpc.get("SecurityGroupIds") or [])))
        if wanted != getattr(self, "_natd_eni_config", ((), ())):
            for eni_id in getattr(self, "_natd_enis", []):
                _eni_release_at[eni_id] = time.monotonic() + LAMBDA_ENI_RELEASE_SECS
            enis = []
            for subnet_id in wanted[0]:
                subnet = ec2.get_subnet(subnet_id)
                eni = ec2.create_network_interface(
                    subnet,
                    _free_addresses(ec2, subnet, 1)[0],
                    group_ids=list(wanted[1]),
                    description=f"AWS Lambda VPC ENI-{self.function_name}",
                )
                enis.append(eni.id)
            self._natd_enis = enis
            self._natd_eni_config = wanted
    return result


lambda_models.LambdaFunction.update_configuration = _update_configuration_enis

_orig_get_all_enis = NetworkInterfaceBackend.get_all_network_interfaces


def _get_all_enis(self, *args, **kwargs):
    _reap_lambda_enis(self)
    return _orig_get_all_enis(self, *args, **kwargs)


NetworkInterfaceBackend.get_all_network_interfaces = _get_all_enis

_orig_delete_sg = SecurityGroupBackend.delete_security_group


def _delete_sg(self, name=None, group_id=None):
    _reap_lambda_enis(self)
    if group_id:
        for eni in list(self.enis.values()):
            if any(getattr(g, "id", g) == group_id for g in eni.group_set):
                raise DependencyViolationError(f"resource {group_id} has a dependent object")
    return _orig_delete_sg(self, name=name, group_id=group_id)


SecurityGroupBackend.delete_security_group = _delete_sg


# --- Security groups as AWS sets them: the default group, launch templates ------------

from moto.ec2.models.instances import InstanceBackend  # noqa: E402
from moto.ec2.models.security_groups import SecurityGroupRule  # noqa: E402

_orig_create_sg = SecurityGroupBackend.create_security_group


def _create_sg(self, name, description, vpc_id=None, tags=None, force=False, is_default=None):
    # A VPC's default security group admits all inbound traffic from its own members and
    # lets everything out (VPC User Guide, "Default security groups for your VPCs"); moto
    # gives it the outbound rule only.
    group = _orig_create_sg(
        self, name, description, vpc_id=vpc_id, tags=tags, force=force, is_default=is_default
    )
    if is_default:
        group.ingress_rules.append(
            SecurityGroupRule(
                self,
                "-1",
                group.id,
                None,
                None,
                None,
                source_group={"GroupId": group.id, "UserId": self.account_id},
                is_egress=False,
            )
        )
    return group


SecurityGroupBackend.create_security_group = _create_sg

_run_instances_inner = InstanceBackend.run_instances


def _run_instances_groups(self, image_id, count, user_data, security_group_names, **kwargs):
    # An instance launched from a template whose primary network interface names groups
    # and asks for a public IP (LaunchTemplateData.NetworkInterfaces[DeviceIndex 0]
    # .Groups and .AssociatePublicIpAddress, the form a template with a public IP must
    # use) gets those groups and a public IP, as on EC2; moto reads only the template's
    # top-level SecurityGroupIds (falling back to the default group) and leaves the
    # instance without a public IP.
    if kwargs.get("launch_template"):
        data = self._get_template_from_args(kwargs["launch_template"]).data
        primary = [n for n in data.get("NetworkInterfaces") or [] if int(n.get("DeviceIndex", 0)) == 0]
        nic = primary[0] if primary else {}
        if (
            not kwargs.get("security_group_ids")
            and not security_group_names
            and not data.get("SecurityGroupIds")
            and nic.get("Groups")
        ):
            kwargs["security_group_ids"] = list(nic["Groups"])
        public = nic.get("AssociatePublicIpAddress")
        if kwargs.get("associate_public_ip") is None and public is not None:
            kwargs["associate_public_ip"] = str(public).lower() == "true"
    return _run_instances_inner(self, image_id, count, user_data, security_group_names, **kwargs)


InstanceBackend.run_instances = _run_instances_groups

INSTANCE_ENI_RELEASE_SECS = float(os.environ.get("NATD_EMU_INSTANCE_ENI_RELEASE_SECS", "2"))
_orig_terminate = ec2_instances.Instance.terminate


def _terminate(self):
    # A terminated instance's primary network interface is deleted with it, as on EC2
    # (it cannot outlive its instance), a moment after: until then it still holds its
    # security groups (DeleteSecurityGroup answers DependencyViolation). moto keeps it.
    result = _orig_terminate(self)
    primary = self.nics.get(0)
    if primary is not None and primary.id in self.ec2_backend.enis:
        _eni_release_at.setdefault(primary.id, time.monotonic() + INSTANCE_ENI_RELEASE_SECS)
    return result


ec2_instances.Instance.terminate = _terminate

_endpoint_inner = VPCBackend.create_vpc_endpoint


def _create_vpc_endpoint_enis(self, vpc_id, service_name, endpoint_type, *args, **kwargs):
    # An interface endpoint's network interfaces get addresses from their subnets and
    # carry the endpoint's security groups, as on AWS (PrivateLink User Guide, "Security
    # groups"); moto gives them random 10.x addresses outside the subnet and no groups.
    endpoint = _endpoint_inner(self, vpc_id, service_name, endpoint_type, *args, **kwargs)
    if endpoint_type and endpoint_type.lower() == "interface":
        groups = list(endpoint.security_group_ids) or [self.get_default_security_group(vpc_id).id]
        ids = []
        for eni_id in endpoint.network_interface_ids:
            old = self.enis.pop(eni_id)
            subnet = old.subnet
            eni = self.create_network_interface(
                subnet,
                subnet.get_available_subnet_ip("vpc-endpoint"),
                group_ids=groups,
                description=f"VPC Endpoint Interface {endpoint.id}",
            )
            ids.append(eni.id)
        endpoint.network_interface_ids = ids
    return endpoint


VPCBackend.create_vpc_endpoint = _create_vpc_endpoint_enis

_endpoint_modify_inner = VPCBackend.modify_vpc_endpoint


def _modify_vpc_endpoint_enis(self, vpc_id, *args, **kwargs):
    # An interface endpoint has one network interface per subnet, with the endpoint's
    # groups: ModifyVpcEndpoint adding a subnet creates one there, removing a subnet
    # deletes it, and a change of groups applies to all of them (moto changes only the
    # endpoint's lists). `vpc_id` is moto's name for the endpoint id.
    _endpoint_modify_inner(self, vpc_id, *args, **kwargs)
    endpoint = self.describe_vpc_endpoints(vpc_end_point_ids=[vpc_id])[0]
    if str(endpoint.vpc_endpoint_type).lower() != "interface":
        return
    groups = list(endpoint.security_group_ids) or [
        self.get_default_security_group(endpoint.vpc_id).id
    ]
    kept, have = [], set()
    for eni_id in endpoint.network_interface_ids:
        eni = self.enis.get(eni_id)
        if eni is None:
            continue
        if eni.subnet.id in endpoint.subnet_ids:
            eni._group_set = [self.get_security_group_from_id(g) for g in groups]
            kept.append(eni_id)
            have.add(eni.subnet.id)
        else:
            self.enis.pop(eni_id, None)
    for subnet_id in endpoint.subnet_ids:
        if subnet_id not in have:
            subnet = self.get_subnet(subnet_id)
            eni = self.create_network_interface(
                subnet,
                subnet.get_available_subnet_ip("vpc-endpoint"),
                group_ids=groups,
                description=f"VPC Endpoint Interface {endpoint.id}",
            )
            kept.append(eni.id)
    endpoint.network_interface_ids = kept


VPCBackend.modify_vpc_endpoint = _modify_vpc_endpoint_enis

# --- IAM: resource ARNs and tag conditions --------------------------------------------

def _param(data, name):
    v = data.get(name)
    if isinstance(v, list):
        v = v[0] if v else None
    return v


def _ec2_resource(region, account, kind, rid):
    from moto.ec2.models import ec2_backends

    tags = ec2_backends[account][region].tags.get(rid, {})
    ctx = {f"ec2:ResourceTag/{k}": v for k, v in tags.items()}
    ctx.update({f"aws:ResourceTag/{k}": v for k, v in tags.items()})
    return (f"arn:aws:ec2:{region}:{account}:{kind}/{rid}", ctx)


def _asg_resource(region, account, group_name, instance_id):
    backend = asg_models.autoscaling_backends[account][region]
    group = backend.autoscaling_groups.get(group_name) if group_name else None
    if group is None and instance_id:
        group, _ = _state_of(backend, instance_id)
    if group is None:
        return ("*", {})
    tags = {t["Key"]: t["Value"] for t in group.tags}
    ctx = {f"autoscaling:ResourceTag/{k}": v for k, v in tags.items()}
    ctx.update({f"aws:ResourceTag/{k}": v for k, v in tags.items()})
    return (group.arn, ctx)


_KIND_OF_PREFIX = {
    "i": "instance",
    "eni": "network-interface",
    "rtb": "route-table",
    "eipalloc": "elastic-ip",
    "sg": "security-group",
    "subnet": "subnet",
    "vpc": "vpc",
}


def _resources(req):
    """The resources (ARN, condition context) a request acts on, for the calls natd makes."""
    data, region, account = req._data, req._region, req.account_id
    action = req._action
    if action in ("ec2:ReplaceRoute", "ec2:CreateRoute"):
        return [_ec2_resource(region, account, "route-table", _param(data, "RouteTableId"))]
    if action in (
        "ec2:ModifyNetworkInterfaceAttribute",
        "ec2:AssignPrivateIpAddresses",
        "ec2:UnassignPrivateIpAddresses",
    ):
        return [_ec2_resource(region, account, "network-interface", _param(data, "NetworkInterfaceId"))]
    if action == "ec2:AssociateAddress":
        out = [_ec2_resource(region, account, "elastic-ip", _param(data, "AllocationId"))]
        if _param(data, "NetworkInterfaceId"):
            out.append(_ec2_resource(region, account, "network-interface", _param(data, "NetworkInterfaceId")))
        return out
    if action == "ec2:CreateTags":
        # One resource per ResourceId.N; aws:TagKeys is the request's tag keys.
        keys = [_param(data, k) for k in sorted(data) if k.startswith("Tag.") and k.endswith(".Key")]
        out = []
        for k in sorted(data):
            if not k.startswith("ResourceId."):
                continue
            rid = _param(data, k)
            kind = _KIND_OF_PREFIX.get(rid.split("-")[0], "*")
            arn, ctx = _ec2_resource(region, account, kind, rid)
            ctx["aws:TagKeys"] = keys
            out.append((arn, ctx))
        return out
    if action in ("autoscaling:CompleteLifecycleAction", "autoscaling:SetInstanceHealth"):
        return [_asg_resource(region, account, _param(data, "AutoScalingGroupName"), _param(data, "InstanceId"))]
    if action == "cloudwatch:PutMetricData":
        # PutMetricData has no resource; its condition key is the namespace.
        doc = getattr(_raw, "cbor_doc", None) or {}
        return [("*", {"cloudwatch:namespace": doc.get("Namespace", "")})]
    return [("*", {})]


def _as_list(v):
    return v if isinstance(v, list) else [v]


def _matches(pattern, value):
    return fnmatch.fnmatchcase(value, pattern)


def _conditions_hold(conditions, ctx):
    """IAM condition evaluation for the operators natd's and natctl's policies use:
    StringEquals and StringLike on single-valued keys, and the ForAllValues: /
    ForAnyValue: set operators on multi-valued keys (aws:TagKeys). As in IAM, a missing
    key fails a plain operator and ForAnyValue, and satisfies ForAllValues."""
    for op, pairs in (conditions or {}).items():
        qualifier, _, base = op.rpartition(":")
        if base not in ("StringEquals", "StringLike"):
            return False

        def one(expected, actual):
            if base == "StringEquals":
                return actual in _as_list(expected)
            return any(_matches(p, actual) for p in _as_list(expected))

        for key, expected in pairs.items():
            actual = ctx.get(key)
            if qualifier == "ForAllValues":
                if actual is not None and not all(one(expected, a) for a in _as_list(actual)):
                    return False
            elif qualifier == "ForAnyValue":
                if actual is None or not any(one(expected, a) for a in _as_list(actual)):
                    return False
            elif qualifier == "":
                if actual is None or isinstance(actual, list) or not one(expected, actual):
                    return False
            else:
                return False
    return True


def _check_action_permitted(self, resource):
    if self._action == "sts:GetCallerIdentity":
        return
    statements = []
    for policy in self._access_key.collect_policies():
        doc = access_control.IAMPolicy(policy)._policy_json
        statements.extend(_as_list(doc["Statement"]))
    for arn, ctx in _resources(self):
        allowed = False
        for s in statements:
            if "Action" in s and not any(_matches(a.lower(), self._action.lower()) for a in _as_list(s["Action"])):
                continue
            if "NotAction" in s and any(_matches(a.lower(), self._action.lower()) for a in _as_list(s["NotAction"])):
                continue
            if not any(p == "*" or _matches(p, arn) for p in _as_list(s.get("Resource", "*"))):
                continue
            if not _conditions_hold(s.get("Condition"), ctx):
                continue
            if s.get("Effect") == "Deny":
                self._raise_access_denied()
            allowed = True
        if not allowed:
            self._raise_access_denied()


access_control.IAMRequest.check_action_permitted = _check_action_permitted

# SigV4 is computed over the bytes the client sent. moto recomputes it from the form it
# parsed, re-encoded the way botocore encodes (a space as '+'), so a request from
# another SDK that encodes a space as %20 (the AWS SDK for Rust) fails with AuthFailure
# where AWS accepts it. The signature is checked against the raw body instead.
_raw = threading.local()
_orig_create_aws_request = access_control.IAMRequestBase._create_aws_request


def _create_aws_request(self):
    body = getattr(_raw, "body", b"")
    original = getattr(_raw, "cbor", None)
    if original is not None:
        # A Smithy RPC v2 CBOR request translated for moto: the signature is over the
        # request as the client sent it.
        self._path, self._body = original["path"], original["body"]
        headers = {
            k: v for k, v in dict(self._headers).items() if k.lower() not in ("content-type", "content-length", "content-encoding")
        }
        headers.update(original["headers"])
        self._headers = headers
        return _orig_create_aws_request(self)
    if not self._body and body:
        self._body = body
    return _orig_create_aws_request(self)


access_control.IAMRequestBase._create_aws_request = _create_aws_request

# IAM names an action by its service prefix, which is not always the signing name:
# CloudWatch signs as "monitoring" and its actions are "cloudwatch:..." (Service
# Authorization Reference, Amazon CloudWatch: "service prefix: cloudwatch"). moto
# derives the action from the signing name, so a policy granting
# cloudwatch:PutMetricData would never match.
_ACTION_PREFIX = {"monitoring": "cloudwatch"}
_orig_iam_request_init = access_control.IAMRequestBase.__init__


def _iam_request_init(self, *args, **kwargs):
    _orig_iam_request_init(self, *args, **kwargs)
    service, _, action = self._action.partition(":")
    if service in _ACTION_PREFIX:
        self._action = f"{_ACTION_PREFIX[service]}:{action}"


access_control.IAMRequestBase.__init__ = _iam_request_init


# --- Limits AWS enforces ----------------------------------------------------------------
#
# moto ships the numbers but enforces none of these (it does enforce 60 rules per VPC
# security group, RulesPerSecurityGroupLimitExceeded, as AWS's default quota):
# - IPv4 addresses per network interface and interfaces per instance, by instance type
#   (EC2 User Guide, "Maximum IP addresses per network interface"; the numbers are
#   DescribeInstanceTypes' NetworkInfo, as moto ships them): AssignPrivateIpAddresses
#   beyond Ipv4AddressesPerInterface fails with PrivateIpAddressLimitExceeded, an
#   interface attached beyond MaximumNetworkInterfaces with AttachmentLimitExceeded.
# - Elastic IPs per region (VPC User Guide, "Elastic IP address quotas": 5 by default,
#   the account attribute vpc-max-elastic-ips): AllocateAddress past it fails with
#   AddressLimitExceeded. NATD_EMU_MAX_EIPS sets the quota (and the attribute).
# - NAT gateways per Availability Zone (VPC User Guide, "Amazon VPC quotas": 5):
#   CreateNatGateway past it fails with NatGatewayLimitExceeded (NATD_EMU_MAX_NAT_PER_AZ).
# - Interface VPC endpoints per VPC (PrivateLink quotas: 50): CreateVpcEndpoint past it
#   fails with VpcEndpointLimitExceeded (NATD_EMU_MAX_INTERFACE_ENDPOINTS).

from moto.ec2.models.instance_types import INSTANCE_TYPES as _INSTANCE_TYPES  # noqa: E402
from moto.ec2.responses import account_attributes as _acct_responses  # noqa: E402

MAX_EIPS = int(os.environ.get("NATD_EMU_MAX_EIPS", "5"))
MAX_NAT_PER_AZ = int(os.environ.get("NATD_EMU_MAX_NAT_PER_AZ", "5"))
MAX_INTERFACE_ENDPOINTS = int(os.environ.get("NATD_EMU_MAX_INTERFACE_ENDPOINTS", "50"))


def _network_info(instance):
    kind = _INSTANCE_TYPES.get(getattr(instance, "instance_type", None) or "", {})
    return kind.get("NetworkInfo", {})


def _check_address_limit(eni, adding):
    instance = getattr(eni, "instance", None)
    if instance is None or adding <= 0:
        return
    limit = _network_info(instance).get("Ipv4AddressesPerInterface")
    have = len(eni.private_ip_addresses) or 1
    if limit and have + adding > limit:
        raise _EC2ClientError(
            "PrivateIpAddressLimitExceeded",
            f"Number of private addresses will exceed limit: {instance.instance_type} allows "
            f"{limit} IPv4 addresses per network interface; {eni.id} has {have}, {adding} requested.",
        )


_limit_assign_inner = _eni_responses.ElasticNetworkInterfaces.assign_private_ip_addresses


def _assign_limited(self):
    eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
    named = [ip for ip in self._get_param("PrivateIpAddresses", []) if _ip_entry(eni, ip) is None]
    count = int(self._get_param("SecondaryPrivateIpAddressCount") or 0)
    _check_address_limit(eni, len(named) + count)
    return _limit_assign_inner(self)


_eni_responses.ElasticNetworkInterfaces.assign_private_ip_addresses = _assign_limited

_orig_attach_eni = NetworkInterfaceBackend.attach_network_interface


def _attach_limited(self, eni_id, instance_id, device_index, *args, **kwargs):
    instance = self.get_instance(instance_id)
    info = _network_info(instance)
    most = info.get("MaximumNetworkInterfaces")
    if most and len(instance.nics) >= most:
        raise _EC2ClientError(
            "AttachmentLimitExceeded",
            f"Interface count {len(instance.nics) + 1} exceeds the limit for {instance.instance_type}",
        )
    eni = self.get_network_interface(eni_id)
    per = info.get("Ipv4AddressesPerInterface")
    if per and len(eni.private_ip_addresses) > per:
        raise _EC2ClientError(
            "PrivateIpAddressLimitExceeded",
            f"{eni_id} has {len(eni.private_ip_addresses)} private addresses; {instance.instance_type} allows {per} per interface",
        )
    return _orig_attach_eni(self, eni_id, instance_id, device_index, *args, **kwargs)


NetworkInterfaceBackend.attach_network_interface = _attach_limited

_orig_allocate = ElasticAddressBackend.allocate_address


def _allocate_limited(self, *args, **kwargs):
    if len(self.addresses) >= MAX_EIPS:
        raise _EC2ClientError("AddressLimitExceeded", "The maximum number of addresses has been reached.")
    return _orig_allocate(self, *args, **kwargs)


ElasticAddressBackend.allocate_address = _allocate_limited

_orig_account_attributes = _acct_responses.AccountAttributes.describe_account_attributes


def _account_attributes(self):
    from moto.core.responses import ActionResult

    result = _orig_account_attributes(self)
    wanted = self._get_param("AttributeNames", []) or []
    attrs = []
    for a in result.result["AccountAttributes"]:
        if a["AttributeName"] in ("vpc-max-elastic-ips", "max-elastic-ips"):
            a = {"AttributeName": a["AttributeName"], "AttributeValues": [{"AttributeValue": str(MAX_EIPS)}]}
        if not wanted or a["AttributeName"] in wanted:
            attrs.append(a)
    return ActionResult({"AccountAttributes": attrs})


_acct_responses.AccountAttributes.describe_account_attributes = _account_attributes


def _refuse_nat_past_quota(backend, subnet_id):
    subnet = backend.get_subnet(subnet_id)
    live = [
        g
        for g in backend.nat_gateways.values()
        if g.state not in ("deleted", "failed")
        and getattr(g, "subnet_id", None)
        and backend.get_subnet(g.subnet_id).availability_zone == subnet.availability_zone
    ]
    if len(live) >= MAX_NAT_PER_AZ:
        raise _EC2ClientError(
            "NatGatewayLimitExceeded",
            f"The maximum number of NAT gateways has been reached ({MAX_NAT_PER_AZ} in {subnet.availability_zone}).",
        )


_nat_quota_inner = nat_responses.NatGateways.create_nat_gateway


def _create_nat_gateway_limited(self):
    subnet_id = self._get_param("SubnetId")
    token = self._get_param("ClientToken")
    if subnet_id and not (token and (self.current_account, self.region, token) in _nat_tokens):
        _refuse_nat_past_quota(self.ec2_backend, subnet_id)
    return _nat_quota_inner(self)


nat_responses.NatGateways.create_nat_gateway = _create_nat_gateway_limited

_endpoint_quota_inner = VPCBackend.create_vpc_endpoint


def _create_vpc_endpoint_limited(self, vpc_id, service_name, endpoint_type, *args, **kwargs):
    if (endpoint_type or "").lower() == "interface":
        live = [
            e
            for e in self.vpc_end_points.values()
            if e.vpc_id == vpc_id
            and (e.vpc_endpoint_type or "").lower() == "interface"
            and getattr(e, "state", "available") not in ("deleted", "deleting")
        ]
        if len(live) >= MAX_INTERFACE_ENDPOINTS:
            raise _EC2ClientError(
                "VpcEndpointLimitExceeded",
                f"The maximum number of interface endpoints per VPC ({MAX_INTERFACE_ENDPOINTS}) has been reached for {vpc_id}.",
            )
    return _endpoint_quota_inner(self, vpc_id, service_name, endpoint_type, *args, **kwargs)


VPCBackend.create_vpc_endpoint = _create_vpc_endpoint_limited


# --- Auto Scaling: instance maintenance policies ----------------------------------------
#
# AWS (CreateAutoScalingGroup / UpdateAutoScalingGroup, InstanceMaintenancePolicy;
# Auto Scaling User Guide, "Instance maintenance policies"): MinHealthyPercentage 100 and
# MaxHealthyPercentage 200 make the group launch a replacement before it terminates the
# instance it replaces (health replacement, instance refresh), and DescribeAutoScalingGroups
# answers the policy. moto ignores the parameter.

_imp_create_inner = asg_responses.AutoScalingResponse.create_auto_scaling_group
_imp_update_inner = asg_responses.AutoScalingResponse.update_auto_scaling_group


def _keep_maintenance_policy(self):
    policy = self._get_param("InstanceMaintenancePolicy")
    if not policy:
        return
    group = self.autoscaling_backend.autoscaling_groups.get(self._get_param("AutoScalingGroupName"))
    if group is None:
        return
    p = {k: int(v) for k, v in policy.items() if v not in (None, "")}
    # AWS: -1 clears a bound.
    group.instance_maintenance_policy = {k: v for k, v in p.items() if v != -1} or None


def _create_asg_imp(self):
    result = _imp_create_inner(self)
    _keep_maintenance_policy(self)
    return result


def _update_asg_imp(self):
    result = _imp_update_inner(self)
    _keep_maintenance_policy(self)
    return result


asg_responses.AutoScalingResponse.create_auto_scaling_group = _create_asg_imp
asg_responses.AutoScalingResponse.update_auto_scaling_group = _update_asg_imp
asg_models.FakeAutoScalingGroup.instance_maintenance_policy = None


# --- EC2: CreateLaunchTemplate is idempotent by ClientToken ---------------------------
#
# AWS (CreateLaunchTemplate, "ClientToken": "Unique, case-sensitive identifier you
# provide to ensure the idempotency of the request"; EC2 API Reference, "Ensuring
# idempotency"): a retried request with the same token answers the template the first
# one created instead of failing with InvalidLaunchTemplateName.AlreadyExistsException.
# moto ignores the token.

from moto.ec2.models.launch_templates import LaunchTemplateBackend as _LTBackend  # noqa: E402
from moto.ec2.responses import launch_templates as _lt_responses  # noqa: E402

_lt_tokens = {}
_lt_token = threading.local()
_orig_create_lt_model = _LTBackend.create_launch_template


def _create_lt_model(self, name, description, template_data, tag_spec):
    token = getattr(_lt_token, "key", None)
    if token is not None:
        known = _lt_tokens.get(token)
        if known is not None and known in self.launch_templates:
            return self.launch_templates[known]
    template = _orig_create_lt_model(self, name, description, template_data, tag_spec)
    if token is not None:
        _lt_tokens[token] = template.id
    return template


_LTBackend.create_launch_template = _create_lt_model
_orig_create_lt_response = _lt_responses.LaunchTemplates.create_launch_template


def _create_lt_response(self):
    token = self._get_param("ClientToken")
    _lt_token.key = (self.current_account, self.region, token) if token else None
    try:
        return _orig_create_lt_response(self)
    finally:
        _lt_token.key = None


_lt_responses.LaunchTemplates.create_launch_template = _create_lt_response


# --- Call log ------------------------------------------------------------------------

from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import validate as _validate  # noqa: E402

_calls = []
# The same calls with the caller's user agent (GET /natd-test/calls?agent=app/natd
# answers natd's alone, without the IMDS fixture's or the tests' own).
_calls_agents = []
# Requests refused by the API-model check (validate.py): operation, code, AWS's answer.
_refusals = []
# NATD_EMU_REFUSALS_LOG=FILE appends each refusal to FILE, to find every request of a
# whole test run that AWS would refuse.
_REFUSALS_LOG = os.environ.get("NATD_EMU_REFUSALS_LOG")
_orig_dispatch = DomainDispatcherApplication.__call__


# AWS applies each request atomically: of two CreateLaunchTemplate calls with one name
# at once, one succeeds and the other fails with AlreadyExists ("Launch template names
# must be unique", CreateLaunchTemplate), and natctl's stack lock depends on exactly
# that. moto checks and inserts in separate steps on the server's request threads, so
# under load both could succeed (measured: 6-8 of 100 such races on a busy 2-core
# machine). Every request runs alone, answer included.
_atomic = threading.RLock()


def _apply(self, environ, start_response):
    with _atomic:
        return [b"".join(_orig_dispatch(self, environ, start_response))]


def _operation(environ, body):
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rsplit(".", 1)[-1]
    for source in (body.decode("utf-8", "replace"), environ.get("QUERY_STRING", "")):
        action = urllib.parse.parse_qs(source).get("Action")
        if action:
            return action[0]
    # REST protocols (Lambda): method and path.
    return f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"


_cut = {"left": None}
# An outage of the AWS endpoint for one client: requests whose user agent carries
# `agent` (natd sends "app/natd") fail for `secs` seconds, either at once with 503
# ("refuse", as an overloaded or unreachable service answers) or only after hanging
# until the outage ends ("hang", as a black-holed endpoint behaves).
_outage = {"until": 0.0, "mode": "refuse", "agent": "app/natd", "service": ""}


def _mutating(op):
    return not any(op.startswith(p) for p in ("Describe", "Get", "List", "GET "))


def _answer(start_response, status, body):
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


# --- Eventual consistency -------------------------------------------------------------
# AWS: "The Amazon EC2 API follows an eventual consistency model ... the result of an
# API command you run that affects your Amazon EC2 resources might not be immediately
# visible to all subsequent commands you run"
# (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html), and IAM:
# "changes are not immediately visible ... (eventual consistency)"
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html).
# Modelled for the reads natd and natctl decide on: within NATD_EMU_STALE_SECS (default
# 0: off; the test harness turns it on) of a mutating request, a read from a client whose
# user agent carries one of NATD_EMU_STALE_AGENTS (default "app/natd,app/natctl") is
# answered from the state as it was that long ago: the answer the same request got
# before the mutations of the window, when one was given (a read never seen before is
# answered fresh). The worst case, deterministically: a reader that polls sees every
# change exactly the window late.
STALE_SECS = float(os.environ.get("NATD_EMU_STALE_SECS", "0"))
STALE_AGENTS = [a for a in os.environ.get("NATD_EMU_STALE_AGENTS", "app/natd,app/natctl").split(",") if a]
_STALE_EC2 = {"DescribeAddresses", "DescribeRouteTables", "DescribeNetworkInterfaces", "DescribeInstances"}
# Per kind ("ec2": every service but IAM, whose changes show in EC2's reads; "iam"): the
# times of the mutating requests, in order.
_mutations = {"ec2": [], "iam": []}
# (kind, request) -> [(mutations seen when answered, status, headers, body)], oldest first.
_answers = {}
_stale_lock = threading.Lock()
_stale_served = {"n": 0}


def _service(environ):
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            return scope[3]
    return ""


def _stale_kind(op, service):
    if service == "iam":
        return "iam" if op.startswith(("Get", "List")) else None
    return "ec2" if op in _STALE_EC2 else None


def _consistent(self, environ, start_response, op, body, agent):
    """Dispatches a request, answering the reads named above up to the window late."""
    service = _service(environ)
    kind = "iam" if service == "iam" else "ec2"
    if service == "monitoring":
        # CloudWatch's metrics and alarms never show in EC2's or IAM's reads.
        return _apply(self, environ, start_response)
    if _mutating(op):
        with _stale_lock:
            _mutations[kind].append(time.monotonic())
        return _apply(self, environ, start_response)
    read = _stale_kind(op, service)
    if STALE_SECS <= 0 or read is None or not any(a in agent for a in STALE_AGENTS):
        return _apply(self, environ, start_response)
    import bisect

    with _stale_lock:
        times = _mutations[read]
        seen = len(times)
        visible = bisect.bisect_right(times, time.monotonic() - STALE_SECS)
    got = {}

    def capture(status, headers, exc_info=None):
        got["status"], got["headers"] = status, headers
        return lambda data: None

    fresh = _apply(self, environ, capture)[0]
    key = (read, environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""), body)
    answer = (got["status"], got["headers"], fresh)
    with _stale_lock:
        kept = [a for a in _answers.get(key, []) if a[0] >= visible]
        old = [a for a in _answers.get(key, []) if a[0] == visible]
        if got["status"].startswith("200"):
            kept = [a for a in kept if a[0] != seen] + [(seen,) + answer]
        _answers[key] = kept
        if visible < seen and old:
            answer = old[-1][1:]
            _stale_served["n"] += 1
    start_response(answer[0], answer[1])
    return [answer[2]]


# --- CloudWatch: Smithy RPC v2 CBOR -----------------------------------------------------
# The AWS SDKs call CloudWatch with the Smithy RPC v2 CBOR protocol (POST
# /service/GraniteServiceVersion20100801/operation/OPERATION, `smithy-protocol:
# rpc-v2-cbor`, a CBOR body), one of the three its model lists beside AWS JSON 1.0 and
# query. moto 5.2.5 reads JSON and query only: a CBOR request is translated into the
# same request in AWS JSON 1.0, and moto's answer back into CBOR (timestamps as CBOR tag
# 1, epoch seconds, as the protocol requires; errors as a map with `__type`). The
# signature is checked over the request as sent.
import re as _re  # noqa: E402

import botocore.session as _botocore_session  # noqa: E402
import cbor2  # noqa: E402

_CBOR_PATH = _re.compile(r"^/service/([^/]+)/operation/([^/]+)$")
_cw_model = None


def _cloudwatch_model():
    global _cw_model
    if _cw_model is None:
        _cw_model = _botocore_session.get_session().get_service_model("cloudwatch")
    return _cw_model


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if hasattr(v, "timestamp"):
        return v.timestamp()
    if isinstance(v, (bytes, bytearray)):
        import base64

        return base64.b64encode(v).decode()
    return v


def _to_cbor_value(shape, v):
    """A JSON value of `shape` as the CBOR protocol writes it."""
    import datetime

    if shape is None or v is None:
        return v
    t = shape.type_name
    if t == "structure":
        return {k: _to_cbor_value(shape.members.get(k), x) for k, x in v.items() if k in shape.members}
    if t == "list":
        return [_to_cbor_value(shape.member, x) for x in v]
    if t == "map":
        return {k: _to_cbor_value(shape.value, x) for k, x in v.items()}
    if t == "timestamp":
        if isinstance(v, str):
            try:
                when = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                return v
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            secs = when.timestamp()
        else:
            secs = float(v)
        return cbor2.CBORTag(1, secs)
    if t in ("double", "float"):
        return float(v)
    if t in ("integer", "long"):
        return int(v)
    return v


def _cbor_request(environ, body):
    """Rewrites a CBOR request in place as AWS JSON 1.0; returns the operation, or None."""
    if environ.get("HTTP_SMITHY_PROTOCOL", "").lower() != "rpc-v2-cbor":
        return None
    m = _CBOR_PATH.match(environ.get("PATH_INFO", ""))
    if not m:
        return None
    service, op = m.groups()
    # The SDKs gzip a PutMetricData body above 10 KiB (the operation's
    # requestCompression trait); the signature covers the compressed bytes.
    encoding = environ.get("HTTP_CONTENT_ENCODING", "")
    plain = body
    if "gzip" in encoding.lower() and body:
        import gzip

        plain = gzip.decompress(body)
    doc = _jsonable(cbor2.loads(plain)) if plain else {}
    headers = {
        "Content-Type": environ.get("CONTENT_TYPE", ""),
        "Content-Length": environ.get("CONTENT_LENGTH", ""),
    }
    if encoding:
        headers["Content-Encoding"] = encoding
        environ.pop("HTTP_CONTENT_ENCODING", None)
    _raw.cbor = {
        "path": environ.get("PATH_INFO", ""),
        "body": body,
        "headers": headers,
    }
    _raw.cbor_doc = doc
    new = json.dumps(doc).encode()
    environ["PATH_INFO"] = "/"
    environ["CONTENT_TYPE"] = "application/x-amz-json-1.0"
    environ["CONTENT_LENGTH"] = str(len(new))
    environ["HTTP_X_AMZ_TARGET"] = f"{service}.{op}"
    environ["wsgi.input"] = io.BytesIO(new)
    _raw.body = new
    return op, new


def _cbor_answer(op, status, headers, body):
    """moto's JSON answer to a translated request, in CBOR."""
    # NATD_EMU_DEBUG_CBOR=FILE: every translated answer, as moto gave it, for debugging.
    if os.environ.get("NATD_EMU_DEBUG_CBOR"):
        with open(os.environ["NATD_EMU_DEBUG_CBOR"], "a") as f:
            f.write(f"{op} {status} {headers} {body!r}\n")
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        doc = {}
    if status.startswith("2"):
        try:
            shape = _cloudwatch_model().operation_model(op).output_shape
        except Exception:
            shape = None
        out = _to_cbor_value(shape, doc) if shape is not None else {}
    else:
        if not doc and body.lstrip().startswith(b"<"):
            # moto's authorization errors are XML whatever the protocol.
            import xml.etree.ElementTree as ET

            try:
                root = ET.fromstring(body)
                doc = {
                    "__type": root.findtext(".//Code") or "",
                    "message": root.findtext(".//Message") or "",
                }
            except ET.ParseError:
                doc = {}
        code = doc.get("__type") or doc.get("code") or "InternalFailure"
        out = {"__type": code.rsplit("#", 1)[-1], "message": doc.get("message") or doc.get("Message") or ""}
    data = cbor2.dumps(out)
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
    kept += [("Content-Type", "application/cbor"), ("Content-Length", str(len(data))), ("smithy-protocol", "rpc-v2-cbor")]
    return status, kept, data


# PutMetricData's limits (CloudWatch API Reference, PutMetricData: "Each PutMetricData
# request is limited to 1 MB in size for HTTP POST requests. You can send a payload
# compressed by gzip. Each request is also limited to no more than 1000 different
# metrics"; MetricDatum: up to 30 dimensions, up to 150 values; "Data points with time
# stamps from 24 hours ago or longer can take at least 48 hours to become available"
# and time stamps more than two weeks old or two hours in the future are refused).
# moto enforces none of them.
from moto.cloudwatch import responses as _cw_responses  # noqa: E402
from moto.cloudwatch.exceptions import InvalidParameterValue as _CwInvalid  # noqa: E402

_PUT_METRIC_MAX = 1000
_PUT_METRIC_BYTES = 1024 * 1024
_orig_put_metric_data = _cw_responses.CloudWatchResponse.put_metric_data


def _put_metric_data(self):
    import datetime

    data = self._get_param("MetricData", [])
    size = len(getattr(_raw, "cbor", None) and _raw.cbor["body"] or self.body or b"")
    if size > _PUT_METRIC_BYTES:
        raise _CwInvalid(f"The request is {size} bytes; PutMetricData accepts at most {_PUT_METRIC_BYTES}.")
    if len(data) > _PUT_METRIC_MAX:
        raise _CwInvalid(
            f"The collection MetricData must not have a size greater than {_PUT_METRIC_MAX}."
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    for i, d in enumerate(data, 1):
        if len(d.get("Dimensions") or []) > 30:
            raise _CwInvalid(f"The collection MetricData.member.{i}.Dimensions must not have a size greater than 30.")
        if len(d.get("Values") or []) > 150:
            raise _CwInvalid(f"The collection MetricData.member.{i}.Values must not have a size greater than 150.")
        ts = d.get("Timestamp")
        if ts is not None:
            when = ts if isinstance(ts, datetime.datetime) else None
            if when is None:
                try:
                    when = datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc)
                except (TypeError, ValueError):
                    when = datetime.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            if when < now - datetime.timedelta(days=14) or when > now + datetime.timedelta(hours=2):
                raise _CwInvalid(
                    f"The parameter MetricData.member.{i}.Timestamp must specify a time no more than two weeks in the past and no more than two hours in the future."
                )
    return _orig_put_metric_data(self)


_cw_responses.CloudWatchResponse.put_metric_data = _put_metric_data


def _dispatch(self, environ, start_response):
    _raw.cbor = None
    _raw.cbor_doc = None
    cbor_op = None
    if environ.get("HTTP_SMITHY_PROTOCOL"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        translated = _cbor_request(environ, raw)
        if translated is not None:
            cbor_op = translated[0]
            got = {}

            def capture(status, headers, exc_info=None):
                got["status"], got["headers"] = status, headers
                return lambda data: None

            body = b"".join(_dispatch_inner(self, environ, capture))
            status, headers, data = _cbor_answer(cbor_op, got["status"], got["headers"], body)
            start_response(status, headers)
            return [data]
    return _dispatch_inner(self, environ, start_response)


def _dispatch_inner(self, environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/natd-test/calls":
        agent = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("agent", [None])[0]
        if agent is None:
            return _answer(start_response, "200 OK", json.dumps(_calls).encode())
        mine = [op for op, ua in _calls_agents if agent in ua]
        return _answer(start_response, "200 OK", json.dumps(mine).encode())
    if path == "/natd-test/stale":
        return _answer(start_response, "200 OK", json.dumps({"window_secs": STALE_SECS, "served": _stale_served["n"]}).encode())
    if path == "/natd-test/refused":
        return _answer(start_response, "200 OK", json.dumps(_refusals).encode())
    if path == "/natd-test/cut":
        after = int(urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("after", ["-1"])[0])
        _cut["left"] = None if after < 0 else after
        return _answer(start_response, "200 OK", b"{}")
    if path == "/natd-test/outage":
        q = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        _outage.update(
            until=time.monotonic() + float(q.get("secs", ["0"])[0]),
            mode=q.get("mode", ["refuse"])[0],
            agent=q.get("agent", ["app/natd"])[0],
            service=q.get("service", [""])[0],
        )
        return _answer(start_response, "200 OK", b"{}")
    if not path.startswith("/moto-api"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        _raw.body = body
        op = _operation(environ, body)
        _calls.append(op)
        _calls_agents.append(
            (op, environ.get("HTTP_USER_AGENT", "") + " " + environ.get("HTTP_X_AMZ_USER_AGENT", ""))
        )
        refused = _validate.check(environ, body)
        if refused is not None:
            status, content_type, answer, code = refused
            _refusals.append({"op": op, "code": code, "message": answer.decode("utf-8", "replace")})
            if _REFUSALS_LOG:
                with open(_REFUSALS_LOG, "a") as f:
                    f.write(f"{op} {code} {answer.decode('utf-8', 'replace')}\n")
            headers = [("Content-Type", content_type), ("Content-Length", str(len(answer)))]
            if content_type == "application/json":
                headers.append(("x-amzn-ErrorType", code))
            start_response(status, headers)
            return [answer]
        agent = environ.get("HTTP_USER_AGENT", "") + " " + environ.get("HTTP_X_AMZ_USER_AGENT", "")
        left = _outage["until"] - time.monotonic()
        if left > 0 and _outage["agent"] in agent and _outage["service"] in ("", _service(environ)):
            if _outage["mode"] == "hang":
                time.sleep(left)
            return _answer(
                start_response,
                "503 Service Unavailable",
                b"<Response><Errors><Error><Code>Unavailable</Code><Message>The service is unavailable.</Message></Error></Errors></Response>",
            )
        if _cut["left"] is not None and _mutating(op):
            if _cut["left"] == 0:
                return _answer(start_response, "503 Service Unavailable", b'{"message": "cut off"}')
            _cut["left"] -= 1
        if (
            _service(environ) == "lambda"
            and environ.get("REQUEST_METHOD") == "GET"
            and environ.get("PATH_INFO", "").rstrip("/") == "/2016-08-19/account-settings"
        ):
            return _answer(start_response, "200 OK", json.dumps(_lambda_account_settings(environ)).encode())
        return _consistent(self, environ, start_response, op, body, agent)
    return _apply(self, environ, start_response)


LAMBDA_CONCURRENCY = int(os.environ.get("NATD_EMU_LAMBDA_CONCURRENCY", "1000"))
# moto enforces AWS's minimum of 100 unreserved against this quota when it is set.
os.environ.setdefault("MOTO_LAMBDA_CONCURRENCY_QUOTA", str(LAMBDA_CONCURRENCY))


def _lambda_account_settings(environ):
    auth = environ.get("HTTP_AUTHORIZATION", "")
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/") if "Credential=" in auth else []
    region = scope[2] if len(scope) >= 3 else "us-east-1"
    from moto.core import DEFAULT_ACCOUNT_ID

    functions = lambda_models.lambda_backends[DEFAULT_ACCOUNT_ID][region].list_functions()
    reserved = sum(int(f.reserved_concurrency or 0) for f in functions)
    return {
        "AccountLimit": {
            "TotalCodeSize": 80530636800,
            "CodeSizeUnzipped": 262144000,
            "CodeSizeZipped": 52428800,
            "ConcurrentExecutions": LAMBDA_CONCURRENCY,
            "UnreservedConcurrentExecutions": LAMBDA_CONCURRENCY - reserved,
        },
        "AccountUsage": {"TotalCodeSize": sum(int(getattr(f, "code_size", 0) or 0) for f in functions), "FunctionCount": len(functions)},
    }


# --- CloudWatch alarms are evaluated ----------------------------------------------------
# AWS evaluates a metric alarm once a period: the statistic of each of its last
# EvaluationPeriods periods against the threshold, ALARM when DatapointsToAlarm of them
# breach, a period without data counted as TreatMissingData says (breaching,
# notBreaching, ignore: the state stays, missing: INSUFFICIENT_DATA when all are)
# ("Using Amazon CloudWatch alarms", "Evaluating an alarm", "Configuring how CloudWatch
# alarms treat missing data"). SetAlarmState sets a state "temporarily ... the alarm
# returns to its actual state" at its next evaluation. moto never evaluates: an alarm
# stays OK whatever its metric does. Here each alarm is evaluated when read
# (DescribeAlarms) or after PutMetricData, at most once per NATD_EMU_ALARM_EVAL_SECS
# (default 60, AWS's cadence for one-minute alarms) since its last evaluation or state
# change.
from moto.cloudwatch import models as _cw_models  # noqa: E402

ALARM_EVAL_SECS = float(os.environ.get("NATD_EMU_ALARM_EVAL_SECS", "60"))
_alarm_evaluated = {}


def _stat(values, stat):
    if stat == "Sum":
        return sum(values)
    if stat == "Maximum":
        return max(values)
    if stat == "Minimum":
        return min(values)
    if stat == "SampleCount":
        return float(len(values))
    return sum(values) / len(values)


def _breaches(op, value, threshold):
    return {
        "GreaterThanThreshold": value > threshold,
        "GreaterThanOrEqualToThreshold": value >= threshold,
        "LessThanThreshold": value < threshold,
        "LessThanOrEqualToThreshold": value <= threshold,
    }.get(op, False)


def _evaluate(backend, alarm, now):
    import datetime

    if alarm.rule is not None or not alarm.metric_name or alarm.metric_data_queries:
        return
    key = (id(backend), alarm.name)
    last = max(_alarm_evaluated.get(key, 0.0), alarm.state_updated_timestamp.replace(tzinfo=datetime.timezone.utc).timestamp() if alarm.state_updated_timestamp.tzinfo is None else alarm.state_updated_timestamp.timestamp())
    if now - last < ALARM_EVAL_SECS:
        return
    _alarm_evaluated[key] = now
    period = int(alarm.period or 60)
    periods = int(alarm.evaluation_periods or 1)
    needed = int(alarm.datapoints_to_alarm or periods)
    want = sorted((d.name, d.value) for d in alarm.dimensions)
    points = []
    for d in backend.metric_data:
        if d.namespace != alarm.namespace or d.name != alarm.metric_name or not hasattr(d, "value"):
            continue
        if sorted((x.name, x.value) for x in d.dimensions) != want:
            continue
        ts = d.timestamp
        if isinstance(ts, str):
            ts = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=datetime.timezone.utc)
        points.append((ts.timestamp(), float(d.value)))
    breaching, missing, seen = 0, 0, []
    for i in range(periods):
        hi, lo = now - i * period, now - (i + 1) * period
        values = [v for t, v in points if lo < t <= hi]
        if not values:
            missing += 1
            if alarm.treat_missing_data == "breaching":
                breaching += 1
            continue
        v = _stat(values, alarm.statistic or "Average")
        seen.append(v)
        if _breaches(alarm.comparison_operator, v, float(alarm.threshold)):
            breaching += 1
    treat = alarm.treat_missing_data or "missing"
    if missing == periods and treat in ("missing", "ignore"):
        state = "INSUFFICIENT_DATA" if treat == "missing" else alarm.state_value
    else:
        state = "ALARM" if breaching >= needed else "OK"
    if state != alarm.state_value:
        shown = ", ".join(f"{v:g}" for v in seen) or "no datapoints"
        verb = "Crossed" if state == "ALARM" else "Not Crossed" if state == "OK" else "Insufficient Data"
        alarm.update_state(
            f"Threshold {verb}: {len(seen)} datapoint(s) [{shown}] compared with the threshold ({float(alarm.threshold):g}).",
            json.dumps({"version": "1.0", "evaluatedDatapoints": seen}),
            state,
        )


def _evaluate_all(backend):
    now = time.time()
    for alarm in list(backend.alarms.values()):
        _evaluate(backend, alarm, now)


# GetMetricStatistics reads the metric of exactly the dimensions given ("you must
# specify the same dimensions that were used when the metrics were created",
# GetMetricStatistics); moto also counts points published with more dimensions, so a
# pair member's per-instance points would be counted again in its stack's.
_orig_get_metric_statistics = _cw_models.CloudWatchBackend.get_metric_statistics


def _get_metric_statistics_exact(self, namespace, metric_name, start_time, end_time, period, stats, dimensions, unit=None):
    want = sorted((d["Name"], d.get("Value")) for d in (dimensions or []))
    everything = self.get_all_metrics
    self.get_all_metrics = lambda: [md for md in everything() if sorted((x.name, x.value) for x in md.dimensions) == want]
    try:
        return _orig_get_metric_statistics(self, namespace, metric_name, start_time, end_time, period, stats, dimensions, unit)
    finally:
        del self.get_all_metrics


_cw_models.CloudWatchBackend.get_metric_statistics = _get_metric_statistics_exact
_orig_describe_alarms_response = _cw_responses.CloudWatchResponse.describe_alarms


def _describe_alarms_evaluated(self):
    _evaluate_all(self.cloudwatch_backend)
    return _orig_describe_alarms_response(self)


_cw_responses.CloudWatchResponse.describe_alarms = _describe_alarms_evaluated
_orig_cw_put = _cw_models.CloudWatchBackend.put_metric_data


def _put_metric_data_evaluated(self, namespace, metric_data):
    _orig_cw_put(self, namespace, metric_data)
    _evaluate_all(self)


_cw_models.CloudWatchBackend.put_metric_data = _put_metric_data_evaluated


DomainDispatcherApplication.__call__ = _dispatch


# --- IPv6: dual-stack functions and blocks in use --------------------------------------

from moto.ec2.models.subnets import Subnet, SubnetBackend  # noqa: E402


def _subnet_ipv6_set(self):
    # DescribeSubnets answers each association's Ipv6CidrBlockState.State as a string
    # ("associated"), as AWS does; moto nests its whole state record there.
    return [
        {
            "ipv6CidrBlock": a["ipv6CidrBlock"],
            "associationId": a["associationId"],
            "ipv6CidrBlockState": {"state": a["ipv6CidrBlockState"]["State"]},
        }
        for a in self.ipv6_cidr_block_associations.values()
        if a["ipv6CidrBlockState"]["State"] == "associated"
    ]


Subnet.ipv6_cidr_block_association_set = property(_subnet_ipv6_set)


def _subnet_ipv6(ec2, subnet_id):
    subnet = ec2.get_subnet(subnet_id)
    return [
        a["ipv6CidrBlock"]
        for a in subnet.ipv6_cidr_block_associations.values()
        if a.get("ipv6CidrBlockState", {}).get("State") == "associated"
    ]


_update_configuration_ipv6_inner = lambda_models.LambdaFunction.update_configuration


def _update_configuration_ipv6(self, config_updates):
    vpc = config_updates.get("VpcConfig")
    if vpc is not None and vpc.get("Ipv6AllowedForDualStack"):
        ec2 = ec2_backends[self.account_id][self.region]
        bare = [s for s in vpc.get("SubnetIds") or [] if not _subnet_ipv6(ec2, s)]
        if bare:
            # Lambda Developer Guide, "Enabling IPv6 access for Lambda functions": the
            # function's subnets must be dual-stack.
            raise InvalidParameterValueException(
                "Ipv6AllowedForDualStack requires dual-stack subnets; these have no IPv6 CIDR block: "
                + ", ".join(bare)
            )
    before = set(getattr(self, "_natd_enis", []))
    result = _update_configuration_ipv6_inner(self, config_updates)
    if vpc is not None:
        ipv6 = bool(vpc.get("Ipv6AllowedForDualStack"))
        ec2 = ec2_backends[self.account_id][self.region]
        for eni_id in getattr(self, "_natd_enis", []):
            if eni_id in ec2.enis and (eni_id not in before or ipv6 != getattr(ec2.enis[eni_id], "_natd_ipv6", False)):
                ec2.enis[eni_id]._natd_ipv6 = ipv6
    return result


lambda_models.LambdaFunction.update_configuration = _update_configuration_ipv6

_orig_disassociate_subnet_block = SubnetBackend.disassociate_subnet_cidr_block


def _disassociate_subnet_block(self, association_id):
    _reap_lambda_enis(self)
    subnet = self.get_subnet_from_ipv6_association(association_id)
    if subnet is not None:
        holders = [
            e.id
            for e in self.enis.values()
            if getattr(e.subnet, "id", None) == subnet.id and getattr(e, "_natd_ipv6", False)
        ]
        if holders:
            raise _EC2ClientError(
                "InvalidCidrBlock.InUse",
                f"The subnet IPv6 CIDR block with association ID {association_id} may not be disassociated, "
                f"because network interfaces in the subnet hold IPv6 addresses: {', '.join(holders)}",
            )
    return _orig_disassociate_subnet_block(self, association_id)


SubnetBackend.disassociate_subnet_cidr_block = _disassociate_subnet_block

_orig_disassociate_vpc_block = VPCBackend.disassociate_vpc_cidr_block


def _disassociate_vpc_block(self, association_id):
    for vpc in self.vpcs.values():
        entry = vpc._cidr_block_association_set.get(association_id)
        if not entry or "::/" not in (entry.get("cidr_block") or ""):
            continue
        block = _ipaddress.ip_network(entry["cidr_block"])
        for subnet in [s for az in self.subnets.values() for s in az.values() if s.vpc_id == vpc.id]:
            for b in _subnet_ipv6(self, subnet.id):
                if _ipaddress.ip_network(b).subnet_of(block):
                    raise _EC2ClientError(
                        "InvalidCidrBlock.InUse",
                        f"The vpc {vpc.id} currently has a subnet within CIDR block {entry['cidr_block']}",
                    )
    return _orig_disassociate_vpc_block(self, association_id)


VPCBackend.disassociate_vpc_cidr_block = _disassociate_vpc_block

_orig_associate_vpc_block = VPCBackend.associate_vpc_cidr_block


def _associate_vpc_block(self, vpc_id, cidr_block, amazon_provided_ipv6_cidr_block):
    # "If you associate an IPv6 CIDR block with your VPC, we automatically add rules
    # that allow all inbound and outbound IPv6 traffic" to its default network ACL
    # (VPC User Guide, "Default network ACL": rules 101, ::/0).
    result = _orig_associate_vpc_block(self, vpc_id, cidr_block, amazon_provided_ipv6_cidr_block)
    if amazon_provided_ipv6_cidr_block:
        for acl in list(self.network_acls.values()):
            if acl.vpc_id != vpc_id or not acl.default:
                continue
            for egress in (False, True):
                if any(e.egress == egress and e.rule_number == 101 for e in acl.network_acl_entries):
                    continue
                self.create_network_acl_entry(
                    network_acl_id=acl.id,
                    rule_number=101,
                    protocol="-1",
                    rule_action="allow",
                    egress=egress,
                    cidr_block=None,
                    icmp_code=None,
                    icmp_type=None,
                    port_range_from=None,
                    port_range_to=None,
                    ipv6_cidr_block="::/0",
                )
    return result


VPCBackend.associate_vpc_cidr_block = _associate_vpc_block



# --- CloudFormation: what natctl's templates use ---------------------------------------
# moto 5.2.5 creates the resource types natctl export writes, with three gaps closed here:
# - AWS::AutoScaling::AutoScalingGroup ignores LifecycleHookSpecificationList and
#   InstanceMaintenancePolicy. CloudFormation creates the group's hooks with the group,
#   before its first instance launches (AWS::AutoScaling::AutoScalingGroup,
#   "LifecycleHookSpecificationList ... the lifecycle hooks are created along with the
#   group"): here the group is made empty, its hooks put, then scaled to its capacity,
#   so the first instance waits in Pending:Wait as it does on AWS.
# - AWS::CloudWatch::Alarm is not modelled: it is, as PutMetricAlarm makes it (its
#   alarms are evaluated as any other).
# - A resource type moto does not model is skipped with a warning, and the stack ends
#   CREATE_COMPLETE without it, which AWS never does: here the stack fails, naming it.
from moto.cloudformation import parsing as _cfn_parsing  # noqa: E402
from moto.cloudwatch import models as _cw_models  # noqa: E402
from moto.core.common_models import CloudFormationModel as _CfnModel  # noqa: E402

_orig_asg_from_cfn = asg_models.FakeAutoScalingGroup.create_from_cloudformation_json.__func__


def _asg_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    props = cloudformation_json["Properties"]
    hooks = props.get("LifecycleHookSpecificationList") or []
    empty = dict(cloudformation_json, Properties=dict(props, MinSize="0", DesiredCapacity="0"))
    group = _orig_asg_from_cfn(cls, resource_name, empty, account_id, region_name, **kwargs)
    backend = asg_models.autoscaling_backends[account_id][region_name]
    for h in hooks:
        backend.create_lifecycle_hook(
            name=h["LifecycleHookName"],
            as_name=group.name,
            transition=h["LifecycleTransition"],
            timeout=int(h.get("HeartbeatTimeout", 3600)),
            result=h.get("DefaultResult", "ABANDON"),
        )
    policy = props.get("InstanceMaintenancePolicy")
    if policy is not None:
        group.instance_maintenance_policy = {k: int(v) for k, v in policy.items()}
    group.min_size = int(props.get("MinSize", 0))
    desired = props.get("DesiredCapacity", props.get("MinSize", 0))
    group.set_desired_capacity(int(desired))
    return group


asg_models.FakeAutoScalingGroup.create_from_cloudformation_json = classmethod(_asg_from_cfn)


class _CfnAlarm(_CfnModel):
    """AWS::CloudWatch::Alarm, made as PutMetricAlarm makes it."""

    # moto's model registry files a model under the service its module names.
    __module__ = "moto.cloudwatch.models"

    @staticmethod
    def cloudformation_name_type():
        return "AlarmName"

    @staticmethod
    def cloudformation_type():
        return "AWS::CloudWatch::Alarm"

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        p = cloudformation_json["Properties"]
        backend = _cw_models.cloudwatch_backends[account_id][region_name]
        alarm = backend.put_metric_alarm(
            name=p.get("AlarmName") or resource_name,
            namespace=p.get("Namespace"),
            metric_name=p.get("MetricName"),
            comparison_operator=p["ComparisonOperator"],
            evaluation_periods=int(p["EvaluationPeriods"]),
            period=int(p.get("Period", 60)),
            threshold=float(p.get("Threshold", 0)),
            statistic=p.get("Statistic"),
            description=p.get("AlarmDescription", ""),
            dimensions=p.get("Dimensions", []),
            alarm_actions=p.get("AlarmActions", []),
            ok_actions=p.get("OKActions", []),
            insufficient_data_actions=p.get("InsufficientDataActions", []),
            datapoints_to_alarm=p.get("DatapointsToAlarm"),
            treat_missing_data=p.get("TreatMissingData"),
            tags=p.get("Tags", []),
        )
        obj = cls()
        obj.name = alarm.name
        return obj

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
        _cw_models.cloudwatch_backends[account_id][region_name].delete_alarms([resource_name])

    @property
    def physical_resource_id(self):
        return self.name

    def delete(self, account_id, region_name):
        _cw_models.cloudwatch_backends[account_id][region_name].delete_alarms([self.name])


# AWS::EC2::SecurityGroup: an ingress rule for all protocols (IpProtocol -1) has no
# ports ("FromPort ... If you specify -1 for the protocol, you don't need a port
# range"); moto reads them unconditionally.
from moto.ec2.models import security_groups as _sg_models  # noqa: E402

_orig_sg_from_cfn = _sg_models.SecurityGroup.create_from_cloudformation_json.__func__


def _sg_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    props = cloudformation_json.get("Properties", {})
    for rule in props.get("SecurityGroupIngress", []) + props.get("SecurityGroupEgress", []):
        rule.setdefault("FromPort", None)
        rule.setdefault("ToPort", None)
    return _orig_sg_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)


_sg_models.SecurityGroup.create_from_cloudformation_json = classmethod(_sg_from_cfn)

# AWS::IAM::InstanceProfile: CloudFormation reports the profile created once IAM has
# propagated it, so the stack's launch template and group can use it at once (the
# time it takes is the stack's, as on AWS, where a new profile adds minutes).
_orig_profile_from_cfn = iam_models.InstanceProfile.create_from_cloudformation_json.__func__


def _profile_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    profile = _orig_profile_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
    wait = getattr(profile, "_natd_usable_at", 0) - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    return profile


iam_models.InstanceProfile.create_from_cloudformation_json = classmethod(_profile_from_cfn)

# Deleting a stack: CloudFormation deletes in reverse dependency order and waits out
# what AWS releases in the background (a terminated instance's network interface still
# holds its security group for a while); it retries a DependencyViolation until the
# dependency is gone (here: up to 60 s) instead of failing the delete at once.
_orig_resources_delete = _cfn_parsing.ResourceMap.delete


def _resources_delete(self):
    give_up = time.monotonic() + 60
    while True:
        try:
            return _orig_resources_delete(self)
        except DependencyViolationError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.5)


_cfn_parsing.ResourceMap.delete = _resources_delete

# AWS::IAM::Role Policies: IAM keeps each inline policy as the JSON document the
# template gave (GetRolePolicy answers it); moto keeps the template's parsed object, which
# GetRolePolicy then answers as Python's repr of it.
_orig_role_from_cfn = iam_models.Role.create_from_cloudformation_json.__func__


def _role_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    props = cloudformation_json.get("Properties", {})
    for policy in props.get("Policies", []):
        if not isinstance(policy.get("PolicyDocument"), str):
            policy["PolicyDocument"] = json.dumps(policy["PolicyDocument"])
    return _orig_role_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)


iam_models.Role.create_from_cloudformation_json = classmethod(_role_from_cfn)

# AWS::EC2::EIP and AWS::EC2::NatGateway: their Tags are the resource's tags (moto
# drops them, and natd finds the stack's addresses, natctl its gateways, by tag); a
# NAT gateway resource is complete once the gateway is available (CloudFormation waits
# for it: the same time CreateNatGateway takes here). A regional gateway made by a
# template is not modelled (the stack fails, naming it).
_orig_eip_from_cfn = ElasticAddress.create_from_cloudformation_json.__func__


def _eip_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    eip = _orig_eip_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
    tags = {t["Key"]: t["Value"] for t in (cloudformation_json.get("Properties") or {}).get("Tags", [])}
    if tags:
        eip.ec2_backend.create_tags([eip.allocation_id], tags)
    return eip


ElasticAddress.create_from_cloudformation_json = classmethod(_eip_from_cfn)


def _natgw_from_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    from moto.ec2.models import ec2_backends

    p = cloudformation_json["Properties"]
    if p.get("AvailabilityMode", "zonal") != "zonal":
        raise ValueError("the emulator does not model a regional NAT gateway made by CloudFormation")
    backend = ec2_backends[account_id][region_name]
    tags = {t["Key"]: t["Value"] for t in p.get("Tags", [])}
    gw = backend.create_nat_gateway(
        p["SubnetId"], p.get("AllocationId"), tags=tags, connectivity_type=p.get("ConnectivityType", "public")
    )
    time.sleep(NAT_PENDING_SECS)
    return gw


NatGateway.create_from_cloudformation_json = classmethod(_natgw_from_cfn)


# Deleting a stack deletes its addresses, gateways and routes (moto 5.2.5 keeps them):
# a gateway is deleted, and CloudFormation waits until it is, before its address is
# released.
def _natgw_delete(self, account_id, region_name):
    if self.state not in ("deleting", "deleted"):
        self.ec2_backend.delete_nat_gateway(self.id)
        time.sleep(NAT_DELETING_SECS)


def _eip_delete(self, account_id, region_name):
    if self.association_id:
        self.ec2_backend.disassociate_address(association_id=self.association_id)
    self.ec2_backend.release_address(allocation_id=self.allocation_id)


def _route_delete(self, account_id, region_name):
    backend = self.route_table.ec2_backend
    backend.delete_route(self.route_table.id, self.destination_cidr_block)


NatGateway.delete = _natgw_delete
ElasticAddress.delete = _eip_delete
Route.delete = _route_delete

_cfn_parsing.get_model_map.cache_clear()
_cfn_parsing.get_name_type_map.cache_clear()
_orig_class_from_type = _cfn_parsing.resource_class_from_type


def _class_from_type(resource_type):
    found = _orig_class_from_type(resource_type)
    if found is None and resource_type not in _cfn_parsing.NULL_MODELS:
        raise ValueError(f"the emulator does not model CloudFormation resource type {resource_type}")
    return found


_cfn_parsing.resource_class_from_type = _class_from_type

# A resource that fails fails its stack, and CloudFormation rolls back what it made
# (stack status ROLLBACK_COMPLETE, the failure in the stack's events); moto lets the
# error escape the CreateStack call and keeps what it made.
from moto.cloudformation import models as _cfn_models  # noqa: E402

_orig_create_resources = _cfn_models.Stack.create_resources


def _create_resources(self):
    try:
        _orig_create_resources(self)
    except Exception as e:  # any resource's failure, as CloudFormation reports it
        import traceback

        traceback.print_exc()
        self._add_stack_event("CREATE_FAILED", resource_status_reason=f"{type(e).__name__}: {e}")
        self.status = "ROLLBACK_IN_PROGRESS"
        try:
            self.resource_map.delete()
        except Exception as gone:  # noqa: BLE001 - what could not be made cannot go
            print(f"emulator: rollback of {self.name}: {gone}", file=sys.stderr)
        # A rolled-back stack has no outputs (they name what is gone).
        self.output_map = _cfn_parsing.OutputMap(self.resource_map, {}, self.stack_id)
        self.status = "ROLLBACK_COMPLETE"
        self._add_stack_event("ROLLBACK_COMPLETE")


_cfn_models.Stack.create_resources = _create_resources


if __name__ == "__main__":
    from moto.server import main

    main(sys.argv[1:])
