//! A VPC in the emulator shaped like the user story (public and private subnets in two
//! AZs), NAT instances in an Auto Scaling group, and a namespace that plays a NAT
//! instance running the real natd binary against the emulator and its IMDS fixture.

use crate::emulator::{Emulator, Imds, TEST_KEY};
use crate::netns::Netns;
use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag as AsgTag};
use aws_sdk_ec2::types::{
    Filter, NetworkInterfaceAttribute, RequestLaunchTemplateData, ResourceType, Tag,
    TagSpecification,
};
use natd_contract::{EGRESS_TAG, STACK_TAG};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};

/// An arm64 image from the emulator's catalogue: Amazon Linux 2023 minimal, the base of
/// natd's AMI (t4g instances run only arm64 images).
pub const IMAGE: &str = "ami-069e86854ff1917d2";

/// The VPC and its parts.
#[derive(Debug, Clone)]
pub struct World {
    pub ec2: aws_sdk_ec2::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub vpc: String,
    pub igw: String,
    pub public_subnet: String,
    pub private_subnets: Vec<String>,
    /// The public subnets' route table (0.0.0.0/0 -> the internet gateway).
    pub public_table: String,
}

fn tags(kind: ResourceType, pairs: &[(&str, &str)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(kind);
    for (k, v) in pairs {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}

impl World {
    /// VPC 10.20.0.0/16 with an internet gateway, a public subnet in AZ a and private
    /// subnets in AZs a and b.
    pub async fn new(sdk: &aws_config::SdkConfig) -> Self {
        let ec2 = aws_sdk_ec2::Client::new(sdk);
        let asg = aws_sdk_autoscaling::Client::new(sdk);
        let vpc = ec2
            .create_vpc()
            .cidr_block("10.20.0.0/16")
            .send()
            .await
            .unwrap();
        let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
        // DNS hostnames on, as a VPC with interface endpoints (private DNS) needs; AWS
        // leaves them off in a new VPC.
        ec2.modify_vpc_attribute()
            .vpc_id(&vpc)
            .enable_dns_hostnames(
                aws_sdk_ec2::types::AttributeBooleanValue::builder()
                    .value(true)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let igw = ec2.create_internet_gateway().send().await.unwrap();
        let igw = igw
            .internet_gateway()
            .unwrap()
            .internet_gateway_id()
            .unwrap()
            .to_string();
        ec2.attach_internet_gateway()
            .internet_gateway_id(&igw)
            .vpc_id(&vpc)
            .send()
            .await
            .unwrap();
        let subnet = |cidr: &'static str, az: &'static str| {
            let (ec2, vpc) = (ec2.clone(), vpc.clone());
            async move {
                let s = ec2
                    .create_subnet()
                    .vpc_id(vpc)
                    .cidr_block(cidr)
                    .availability_zone(az)
                    .send()
                    .await
                    .unwrap();
                s.subnet().unwrap().subnet_id().unwrap().to_string()
            }
        };
        let public_subnet = subnet("10.20.0.0/24", "eu-west-1a").await;
        let private_subnets = vec![
            subnet("10.20.1.0/24", "eu-west-1a").await,
            subnet("10.20.2.0/24", "eu-west-1b").await,
        ];
        // The public subnet routes to the internet gateway through its own table.
        let public_rtb = ec2.create_route_table().vpc_id(&vpc).send().await.unwrap();
        let public_rtb = public_rtb
            .route_table()
            .unwrap()
            .route_table_id()
            .unwrap()
            .to_string();
        ec2.create_route()
            .route_table_id(&public_rtb)
            .destination_cidr_block("0.0.0.0/0")
            .gateway_id(&igw)
            .send()
            .await
            .unwrap();
        ec2.associate_route_table()
            .route_table_id(&public_rtb)
            .subnet_id(&public_subnet)
            .send()
            .await
            .unwrap();
        Self {
            ec2,
            asg,
            vpc,
            igw,
            public_subnet,
            private_subnets,
            public_table: public_rtb,
        }
    }

    /// A second public subnet, 10.20.10.0/24 in AZ b (prod needs one per AZ).
    pub async fn public_subnet_b(&self) -> String {
        let s = self
            .ec2
            .create_subnet()
            .vpc_id(&self.vpc)
            .cidr_block("10.20.10.0/24")
            .availability_zone("eu-west-1b")
            .send()
            .await
            .unwrap();
        let id = s.subnet().unwrap().subnet_id().unwrap().to_string();
        self.ec2
            .associate_route_table()
            .route_table_id(&self.public_table)
            .subnet_id(&id)
            .send()
            .await
            .unwrap();
        id
    }

    /// The route table `subnet` routes by (its association, else the main table), and
    /// that table's default route target and state, read now.
    pub async fn effective_route(&self, subnet: &str) -> (String, Option<(String, String)>) {
        let t = self
            .ec2
            .describe_route_tables()
            .filters(Filter::builder().name("vpc-id").values(&self.vpc).build())
            .send()
            .await
            .unwrap();
        let tables = t.route_tables();
        let table = tables
            .iter()
            .find(|t| {
                t.associations()
                    .iter()
                    .any(|a| a.subnet_id() == Some(subnet))
            })
            .or_else(|| {
                tables
                    .iter()
                    .find(|t| t.associations().iter().any(|a| a.main() == Some(true)))
            })
            .unwrap();
        let route = natd::aws::default_route(table).map(|r| {
            (
                natd::aws::route_target(r).unwrap_or_default().to_string(),
                r.state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        });
        (table.route_table_id().unwrap().to_string(), route)
    }

    /// A route table in the VPC, tagged `natd:egress=<stack>` when `stack` is given.
    pub async fn route_table(&self, stack: Option<&str>) -> String {
        let mut req = self.ec2.create_route_table().vpc_id(&self.vpc);
        if let Some(s) = stack {
            req = req.tag_specifications(tags(ResourceType::RouteTable, &[(EGRESS_TAG, s)]));
        }
        req.send()
            .await
            .unwrap()
            .route_table()
            .unwrap()
            .route_table_id()
            .unwrap()
            .to_string()
    }

    /// The default route of `rtb`: (target id, state).
    pub async fn default_route(&self, rtb: &str) -> Option<(String, String)> {
        let t = self
            .ec2
            .describe_route_tables()
            .route_table_ids(rtb)
            .send()
            .await
            .unwrap();
        let table = t.route_tables().first().unwrap();
        natd::aws::default_route(table).map(|r| {
            let target = natd::aws::route_target(r).unwrap_or_default().to_string();
            let state = r
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            (target, state)
        })
    }

    /// A plain instance in the public subnet tagged `natd:stack=<stack>`, without a
    /// public IP (the subnet does not map one on launch).
    pub async fn instance(&self, stack: &str) -> String {
        self.launch(stack, false).await
    }

    /// [`World::instance`] with a public IP, as natctl's launch template asks: without
    /// one an instance reaches neither the internet nor the AWS API.
    pub async fn instance_with_public_ip(&self, stack: &str) -> String {
        self.launch(stack, true).await
    }

    async fn launch(&self, stack: &str, public_ip: bool) -> String {
        let run = self
            .ec2
            .run_instances()
            .image_id(IMAGE)
            .instance_type(aws_sdk_ec2::types::InstanceType::T4gMicro)
            .min_count(1)
            .max_count(1);
        let run = if public_ip {
            run.network_interfaces(
                aws_sdk_ec2::types::InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .subnet_id(&self.public_subnet)
                    .associate_public_ip_address(true)
                    .build(),
            )
        } else {
            run.subnet_id(&self.public_subnet)
        };
        let r = run
            .tag_specifications(tags(ResourceType::Instance, &[(STACK_TAG, stack)]))
            // As natctl's launch template tags the NAT instance's ENI.
            .tag_specifications(tags(ResourceType::NetworkInterface, &[(STACK_TAG, stack)]))
            .send()
            .await
            .unwrap();
        r.instances()[0].instance_id().unwrap().to_string()
    }

    /// A NAT Auto Scaling group (1 instance) for `stack`, from a launch template, with
    /// a launch lifecycle hook when `hook`. Returns the group name and its instance.
    pub async fn nat_group(&self, stack: &str, hook: bool) -> (String, String) {
        let name = format!("natd-{stack}");
        let lt = self
            .ec2
            .create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(IMAGE)
                    .instance_type(aws_sdk_ec2::types::InstanceType::T4gMicro)
                    // As natctl's launch template tags the NAT instance's ENI.
                    .tag_specifications(
                        aws_sdk_ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                            .resource_type(ResourceType::NetworkInterface)
                            .tags(Tag::builder().key(STACK_TAG).value(stack).build())
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let lt_id = lt
            .launch_template()
            .unwrap()
            .launch_template_id()
            .unwrap()
            .to_string();
        self.asg
            .create_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(lt_id)
                    .build(),
            )
            .min_size(0)
            .max_size(1)
            .desired_capacity(0)
            .vpc_zone_identifier(&self.public_subnet)
            .tags(
                AsgTag::builder()
                    .key(STACK_TAG)
                    .value(stack)
                    .propagate_at_launch(true)
                    .resource_id(&name)
                    .resource_type("auto-scaling-group")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        if hook {
            self.asg
                .put_lifecycle_hook()
                .auto_scaling_group_name(&name)
                .lifecycle_hook_name("natd-ready")
                .lifecycle_transition(natd_contract::LAUNCHING_TRANSITION)
                .heartbeat_timeout(300)
                .default_result("ABANDON")
                .send()
                .await
                .unwrap();
        }
        self.asg
            .update_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .min_size(1)
            .desired_capacity(1)
            .send()
            .await
            .unwrap();
        let instance = self.group_instances(&name).await.remove(0).0;
        (name, instance)
    }

    /// The group's instances: (id, lifecycle state, health).
    pub async fn group_instances(&self, group: &str) -> Vec<(String, String, String)> {
        let g = self
            .asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .unwrap();
        g.auto_scaling_groups()[0]
            .instances()
            .iter()
            .map(|i| {
                (
                    i.instance_id().unwrap().to_string(),
                    i.lifecycle_state().unwrap().as_str().to_string(),
                    i.health_status().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The primary ENI of an instance: (ENI id, MAC).
    pub async fn eni(&self, instance: &str) -> (String, String) {
        let r = self
            .ec2
            .describe_instances()
            .instance_ids(instance)
            .send()
            .await
            .unwrap();
        let i = &r.reservations()[0].instances()[0];
        let ni = &i.network_interfaces()[0];
        (
            ni.network_interface_id().unwrap().to_string(),
            ni.mac_address().unwrap().to_lowercase(),
        )
    }

    /// The instance's state name.
    pub async fn instance_state(&self, instance: &str) -> String {
        let r = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("instance-id")
                    .values(instance)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        r.reservations()
            .first()
            .and_then(|r| r.instances().first())
            .and_then(|i| i.state())
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|| "absent".into())
    }

    /// Source/dest check of an ENI.
    pub async fn source_dest_check(&self, eni: &str) -> bool {
        let a = self
            .ec2
            .describe_network_interface_attribute()
            .network_interface_id(eni)
            .attribute(NetworkInterfaceAttribute::SourceDestCheck)
            .send()
            .await
            .unwrap();
        a.source_dest_check()
            .and_then(|v| v.value())
            .unwrap_or(true)
    }
}

/// A namespace that plays one NAT instance: its IMDS fixture and the emulator are
/// reachable on 127.0.0.1 inside it, as on an instance.
#[derive(Debug)]
pub struct NatHost {
    pub ns: Netns,
    pub instance_id: String,
    pub eni: String,
    pub mac: String,
    uplink: Option<Netns>,
    _imds: Imds,
    imds_port: u16,
    emulator_url: String,
    dir: tempfile::TempDir,
}

impl NatHost {
    /// A NAT host for `instance_id`; the caller gives it an egress interface with
    /// [`NatHost::uplink_egress`] or a veth carrying [`NatHost::mac`].
    pub async fn new(emu: &Emulator, world: &World, instance_id: &str) -> Self {
        let (eni, mac) = world.eni(instance_id).await;
        let imds = emu.imds(instance_id);
        let ns = Netns::new("nat");
        ns.forward_loopback(emu.port);
        ns.forward_loopback(imds.port);
        Self {
            ns,
            instance_id: instance_id.to_string(),
            eni,
            mac,
            uplink: None,
            imds_port: imds.port,
            _imds: imds,
            emulator_url: emu.url(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An egress interface `ens5` with the ENI's MAC, linked to an otherwise empty
    /// namespace, for tests without a data plane.
    pub fn uplink_egress(&mut self) {
        let up = Netns::new("up");
        self.ns
            .link("ens5", "198.51.100.2/24", &up, "up0", "198.51.100.1/24");
        self.ns
            .sh(&format!("ip link set ens5 address {}", self.mac));
        self.uplink = Some(up);
    }

    /// Writes a natd config for this host: the common part plus `extra` TOML lines.
    pub fn config(&self, stack: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("natd-{}.toml", rand_suffix()));
        // Tests run passes every second unless `extra` says otherwise.
        let interval = if extra.contains("interval_secs") {
            ""
        } else {
            "interval_secs = 1\n"
        };
        // ... and read EC2 for drift at every pass too (natd's steady cadence is a
        // minute), unless `extra` sets either (then natd's defaults apply).
        let drift = if extra.contains("drift_check_secs") || extra.contains("interval_secs") {
            ""
        } else {
            "drift_check_secs = 1\n"
        };
        let text = format!(
            "stack = \"{stack}\"\nimds_endpoint = \"http://127.0.0.1:{}\"\naws_endpoint_url = \"{}\"\n{interval}{drift}startup_attempts = 3\n{extra}\n",
            self.imds_port, self.emulator_url
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn natd(&self, config: &std::path::Path, key: (&str, &str)) -> std::process::Command {
        self.natd_at(config, key, &crate::bin("natd"))
    }

    fn natd_at(
        &self,
        config: &std::path::Path,
        key: (&str, &str),
        bin: &std::path::Path,
    ) -> std::process::Command {
        let mut c = self.ns.command(bin);
        c.arg("--config")
            .arg(config)
            .env("AWS_ACCESS_KEY_ID", key.0)
            .env("AWS_SECRET_ACCESS_KEY", key.1)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET");
        c
    }

    /// Runs `natd --once` with the test key.
    pub fn once(&self, config: &std::path::Path) -> Output {
        self.once_with(config, TEST_KEY)
    }

    /// Runs `natd --once` with the given key.
    pub fn once_with(&self, config: &std::path::Path, key: (&str, &str)) -> Output {
        self.natd(config, key).arg("--once").output().unwrap()
    }

    /// Runs `natd --report-unhealthy` (what natd-unhealthy.service runs) with the key.
    pub fn report_unhealthy_with(&self, config: &std::path::Path, key: (&str, &str)) -> Output {
        self.natd(config, key)
            .arg("--report-unhealthy")
            .output()
            .unwrap()
    }

    /// Starts natd as a daemon; its log goes to a file read by [`Natd::log`].
    pub fn spawn(&self, config: &std::path::Path) -> Natd {
        self.spawn_with(config, &crate::bin("natd"))
    }

    /// Starts the natd binary at `bin` as a daemon.
    pub fn spawn_with(&self, config: &std::path::Path, bin: &std::path::Path) -> Natd {
        self.spawn_env(config, bin, &[])
    }

    /// Starts natd as a daemon with extra environment variables.
    pub fn spawn_env(
        &self,
        config: &std::path::Path,
        bin: &std::path::Path,
        env: &[(&str, &str)],
    ) -> Natd {
        let log = self.dir.path().join(format!("natd-{}.log", rand_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        let child = self
            .natd_at(config, TEST_KEY, bin)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Natd { child, log }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A running natd, killed on drop.
#[derive(Debug)]
pub struct Natd {
    pub child: Child,
    log: PathBuf,
}

impl Natd {
    /// Everything natd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().unwrap().code()
    }
}

impl Drop for Natd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Text of a process's output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
