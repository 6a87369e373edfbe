"""A small IMDSv2 server answering for one instance of the AWS emulator.

Run as: python imds.py --endpoint http://127.0.0.1:PORT --region R --instance-id i-... [-H 127.0.0.1] [-p 0]
       [--local-ipv4s-file PATH]

IMDSv2 only: PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1-21600)
returns a token; every GET must carry it in X-aws-ec2-metadata-token (401 otherwise, or
once it has expired). Metadata is read from the emulator on each request, so it always
describes the instance as it is now. Prints "Running on http://HOST:PORT" on stderr.
"""

import argparse
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--instance-id", required=True)
    p.add_argument("-H", "--host", default="127.0.0.1")
    p.add_argument("-p", "--port", type=int, default=0)
    # The lab's data plane, when it runs one: the secondary addresses its fabric has
    # delivered to the interface, one per line. AWS documents an address remap as
    # asynchronous and says to confirm it through local-ipv4s: with this file, IMDS
    # lists an address once packets for it arrive, not when the API shows it.
    p.add_argument("--local-ipv4s-file")
    args = p.parse_args()
    ec2 = boto3.client(
        "ec2",
        endpoint_url=args.endpoint,
        region_name=args.region,
        # From AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: a real key once the emulator
        # enforces IAM.
    )
    tokens = {}

    def secondary(eni):
        if args.local_ipv4s_file:
            try:
                with open(args.local_ipv4s_file) as f:
                    return [line.strip() for line in f if line.strip()]
            except FileNotFoundError:
                return []
        return [
            a["PrivateIpAddress"]
            for a in eni.get("PrivateIpAddresses", [])
            if not a.get("Primary") and a.get("PrivateIpAddress") != eni.get("PrivateIpAddress")
        ]

    def metadata():
        inst = ec2.describe_instances(InstanceIds=[args.instance_id])["Reservations"][0]["Instances"][0]
        eni = next(n for n in inst["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0)
        vpc = ec2.describe_vpcs(VpcIds=[inst["VpcId"]])["Vpcs"][0]
        cidrs = [a["CidrBlock"] for a in vpc.get("CidrBlockAssociationSet", []) if a["CidrBlockState"]["State"] == "associated"] or [vpc["CidrBlock"]]
        mac = eni["MacAddress"].lower()
        nic = f"network/interfaces/macs/{mac}/"
        az = inst["Placement"]["AvailabilityZone"]
        return {
            "instance-id": inst["InstanceId"],
            "instance-type": inst["InstanceType"],
            "ami-id": inst["ImageId"],
            "local-ipv4": inst.get("PrivateIpAddress", ""),
            "mac": mac,
            "placement/availability-zone": az,
            "placement/region": args.region,
            nic + "interface-id": eni["NetworkInterfaceId"],
            nic + "subnet-id": eni["SubnetId"],
            nic + "vpc-id": eni["VpcId"],
            nic + "vpc-ipv4-cidr-block": vpc["CidrBlock"],
            nic + "vpc-ipv4-cidr-blocks": "\n".join(cidrs),
            # Every private address of the interface, the primary first, as IMDS lists
            # them (where AWS says to confirm that a moved address has arrived).
            nic + "local-ipv4s": "\n".join([eni.get("PrivateIpAddress", "")] + secondary(eni)),
        }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, code, body="", headers=None):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self):
            if self.path != "/latest/api/token":
                return self.reply(404, "Not Found")
            try:
                ttl = int(self.headers.get(TTL_HEADER, ""))
            except ValueError:
                return self.reply(400, "Missing or invalid TTL header")
            if not 1 <= ttl <= 21600:
                return self.reply(400, "TTL out of range")
            token = secrets.token_urlsafe(32)
            tokens[token] = time.monotonic() + ttl
            self.reply(200, token, {TTL_HEADER: str(ttl)})

        def do_GET(self):
            expiry = tokens.get(self.headers.get(TOKEN_HEADER, ""))
            if expiry is None or expiry < time.monotonic():
                return self.reply(401, "Unauthorized")
            prefix = "/latest/meta-data/"
            if not self.path.startswith(prefix):
                return self.reply(404, "Not Found")
            key = self.path[len(prefix):].rstrip("/")
            try:
                md = metadata()
            except Exception as e:  # the emulator lost the instance: IMDS is down for it
                return self.reply(503, f"metadata unavailable: {e}")
            if key in md:
                return self.reply(200, md[key])
            children = sorted({k[len(key) + 1:].split("/")[0] for k in md if key == "" or k.startswith(key + "/")})
            if key == "":
                children = sorted({k.split("/")[0] for k in md})
            if children:
                return self.reply(200, "\n".join(children))
            return self.reply(404, "Not Found")

        def log_message(self, fmt, *a):
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"Running on http://{args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
