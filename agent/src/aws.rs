//! The thin EC2 and Auto Scaling adapter: reads facts for the pure planners and carries
//! out their decisions. Every call goes through the SDK's bounded retry (see `cloud`).

use crate::cloud::ApiError;
use crate::contract::{DEFAULT_ROUTE, EGRESS_TAG, HEALTH_TAG, LAUNCHING_TRANSITION, STACK_TAG};
use crate::routes::{Holder, Route, Table, Target};
use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, NetworkInterfaceAttribute};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A NAT instance of the stack, as DescribeInstances shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `i-...`
    pub instance_id: String,
    /// Its primary private address.
    pub ip: Ipv4Addr,
    /// Its primary ENI.
    pub eni: String,
    /// Launch time, seconds since the epoch.
    pub launch_time: i64,
    /// `natctl rotate` asked it to hand over (the `natd:handover` tag).
    pub handover: bool,
}

/// One of the stack's Elastic IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    /// `eipalloc-...`
    pub allocation_id: String,
    /// The public address.
    pub public_ip: String,
    /// The ENI it is associated with.
    pub eni: Option<String>,
    /// The private address it is associated with.
    pub private_ip: Option<Ipv4Addr>,
}

/// AWS adapter errors, named after the failed call, carrying the resource id.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DescribeInstances on ourselves or on route holders.
    #[error("DescribeInstances {ids}: {source}")]
    DescribeInstances {
        /// Instance ids asked for.
        ids: String,
        /// The service error.
        source: ApiError,
    },
    /// Our own instance is not in DescribeInstances.
    #[error("instance {0} not found in EC2")]
    NoSuchInstance(String),
    /// DescribeNetworkInterfaces.
    #[error("DescribeNetworkInterfaces {ids}: {source}")]
    DescribeInterfaces {
        /// ENI ids asked for.
        ids: String,
        /// The service error.
        source: ApiError,
    },
    /// Reading the source/dest check.
    #[error("DescribeNetworkInterfaceAttribute sourceDestCheck {eni}: {source}")]
    ReadSourceDestCheck {
        /// The ENI.
        eni: String,
        /// The service error.
        source: ApiError,
    },
    /// Disabling the source/dest check.
    #[error("ModifyNetworkInterfaceAttribute SourceDestCheck=false {eni}: {source}")]
    DisableSourceDestCheck {
        /// The ENI.
        eni: String,
        /// The service error.
        source: ApiError,
    },
    /// DescribeRouteTables.
    #[error("DescribeRouteTables in {vpc} tagged {EGRESS_TAG}={stack}: {source}")]
    DescribeRouteTables {
        /// The VPC.
        vpc: String,
        /// The stack.
        stack: String,
        /// The service error.
        source: ApiError,
    },
    /// CreateRoute or ReplaceRoute.
    #[error("{op} 0.0.0.0/0 in {route_table_id} -> {eni}: {source}")]
    WriteRoute {
        /// `CreateRoute` or `ReplaceRoute`.
        op: &'static str,
        /// The table.
        route_table_id: String,
        /// The target.
        eni: String,
        /// The service error.
        source: ApiError,
    },
    /// DescribeAddresses.
    #[error("DescribeAddresses {what}: {source}")]
    DescribeAddresses {
        /// Allocation id or tag asked for.
        what: String,
        /// The service error.
        source: ApiError,
    },
    /// The configured allocation does not exist.
    #[error("Elastic IP {0} not found")]
    NoSuchAddress(String),
    /// AssociateAddress.
    #[error("AssociateAddress {allocation_id} -> {eni}: {source}")]
    AssociateAddress {
        /// The allocation.
        allocation_id: String,
        /// Our ENI.
        eni: String,
        /// The service error.
        source: ApiError,
    },
    /// CreateTags on our own instance.
    #[error("CreateTags {key} on {instance_id}: {source}")]
    Tag {
        /// The tag key.
        key: &'static str,
        /// Our instance.
        instance_id: String,
        /// The service error.
        source: ApiError,
    },
    /// A pair-mode EC2 call (DescribeInstances of the pair, DescribeAddresses,
    /// AssignPrivateIpAddresses, UnassignPrivateIpAddresses, AssociateAddress to a
    /// private address).
    #[error("{op} {target}: {source}")]
    Pair {
        /// The operation.
        op: &'static str,
        /// What it was about.
        target: String,
        /// The service error.
        source: ApiError,
    },
    /// An Auto Scaling call.
    #[error("{op} {target}: {source}")]
    AutoScaling {
        /// The operation.
        op: &'static str,
        /// Instance or group.
        target: String,
        /// The service error.
        source: ApiError,
    },
}

impl Error {
    /// The service's error code, when the service answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::DescribeInstances { source, .. }
            | Error::DescribeInterfaces { source, .. }
            | Error::ReadSourceDestCheck { source, .. }
            | Error::DisableSourceDestCheck { source, .. }
            | Error::DescribeRouteTables { source, .. }
            | Error::WriteRoute { source, .. }
            | Error::DescribeAddresses { source, .. }
            | Error::AssociateAddress { source, .. }
            | Error::Tag { source, .. }
            | Error::Pair { source, .. }
            | Error::AutoScaling { source, .. } => source.code.as_deref(),
            Error::NoSuchInstance(_) | Error::NoSuchAddress(_) => None,
        }
    }

    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::DescribeInstances { source, .. }
            | Error::DescribeInterfaces { source, .. }
            | Error::ReadSourceDestCheck { source, .. }
            | Error::DisableSourceDestCheck { source, .. }
            | Error::DescribeRouteTables { source, .. }
            | Error::WriteRoute { source, .. }
            | Error::DescribeAddresses { source, .. }
            | Error::AssociateAddress { source, .. }
            | Error::Tag { source, .. }
            | Error::Pair { source, .. }
            | Error::AutoScaling { source, .. } => source.is_permanent(),
            Error::NoSuchInstance(_) | Error::NoSuchAddress(_) => true,
        }
    }
}

/// An Elastic IP as natd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// `eipalloc-...`
    pub allocation_id: String,
    /// The public IP.
    pub public_ip: String,
    /// The ENI it is associated with, if any.
    pub eni_id: Option<String>,
}

/// Our membership in an Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The group name.
    pub group: String,
    /// The lifecycle state, e.g. `Pending:Wait`, `InService`.
    pub lifecycle_state: String,
}

/// EC2 and Auto Scaling clients.
#[derive(Debug, Clone)]
pub struct Cloud {
    ec2: aws_sdk_ec2::Client,
    asg: aws_sdk_autoscaling::Client,
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

impl Cloud {
    /// Clients from one SDK configuration.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            ec2: aws_sdk_ec2::Client::new(config),
            asg: aws_sdk_autoscaling::Client::new(config),
        }
    }

    /// Instances by id, as route holders. Unknown ids are simply absent.
    pub async fn holders(&self, ids: &[String]) -> Result<BTreeMap<String, Holder>, Error> {
        let mut out = BTreeMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        // By filter, not InstanceIds: an id that no longer exists must not fail the call.
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::DescribeInstances {
                ids: ids.join(","),
                source: e.into(),
            })?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = i.instance_id() else { continue };
                let stack = i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(STACK_TAG))
                    .and_then(|t| t.value())
                    .map(str::to_string);
                out.insert(
                    id.to_string(),
                    Holder {
                        instance_id: id.to_string(),
                        state: i
                            .state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str().to_string())
                            .unwrap_or_default(),
                        launch_time: i.launch_time().map(|t| t.secs()).unwrap_or(0),
                        stack,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Our own instance as a holder (for its launch time).
    pub async fn me(&self, instance_id: &str) -> Result<Holder, Error> {
        self.holders(&[instance_id.to_string()])
            .await?
            .remove(instance_id)
            .ok_or_else(|| Error::NoSuchInstance(instance_id.to_string()))
    }

    /// The instances ENIs are attached to; detached or deleted ENIs are absent.
    pub async fn eni_owners(&self, enis: &[String]) -> Result<BTreeMap<String, String>, Error> {
        let mut out = BTreeMap::new();
        if enis.is_empty() {
            return Ok(out);
        }
        let resp = self
            .ec2
            .describe_network_interfaces()
            .filters(
                Filter::builder()
                    .name("network-interface-id")
                    .set_values(Some(enis.to_vec()))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::DescribeInterfaces {
                ids: enis.join(","),
                source: e.into(),
            })?;
        for ni in resp.network_interfaces() {
            if let (Some(id), Some(instance)) = (
                ni.network_interface_id(),
                ni.attachment().and_then(|a| a.instance_id()),
            ) {
                out.insert(id.to_string(), instance.to_string());
            }
        }
        Ok(out)
    }

    /// Whether source/dest check is on for `eni`.
    pub async fn source_dest_check(&self, eni: &str) -> Result<bool, Error> {
        let resp = self
            .ec2
            .describe_network_interface_attribute()
            .network_interface_id(eni)
            .attribute(NetworkInterfaceAttribute::SourceDestCheck)
            .send()
            .await
            .map_err(|e| Error::ReadSourceDestCheck {
                eni: eni.to_string(),
                source: e.into(),
            })?;
        // Absent means the default, which is on.
        Ok(resp
            .source_dest_check()
            .and_then(|v| v.value())
            .unwrap_or(true))
    }

    /// Turns source/dest check off on `eni`.
    pub async fn disable_source_dest_check(&self, eni: &str) -> Result<(), Error> {
        self.ec2
            .modify_network_interface_attribute()
            .network_interface_id(eni)
            .source_dest_check(AttributeBooleanValue::builder().value(false).build())
            .send()
            .await
            .map_err(|e| Error::DisableSourceDestCheck {
                eni: eni.to_string(),
                source: e.into(),
            })?;
        Ok(())
    }

    /// The route tables natd takes over in `vpc`: those tagged `natd:egress=<stack>`
    /// and those its boot configuration names (`named`, by id), each with its default
    /// route, sorted by id.
    pub async fn egress_tables(
        &self,
        vpc: &str,
        stack: &str,
        named: &[String],
    ) -> Result<Vec<Table>, Error> {
        let mut out = self
            .tables_where(vpc, stack, tag_filter(EGRESS_TAG, stack))
            .await?;
        if !named.is_empty() {
            let by_id = Filter::builder()
                .name("route-table-id")
                .set_values(Some(named.to_vec()))
                .build();
            out.extend(self.tables_where(vpc, stack, by_id).await?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// Route tables in `vpc` that pass `filter`, with their default route.
    async fn tables_where(
        &self,
        vpc: &str,
        stack: &str,
        filter: Filter,
    ) -> Result<Vec<Table>, Error> {
        let mut out = Vec::new();
        let mut pages = self
            .ec2
            .describe_route_tables()
            .filters(Filter::builder().name("vpc-id").values(vpc).build())
            .filters(filter)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::DescribeRouteTables {
                vpc: vpc.to_string(),
                stack: stack.to_string(),
                source: e.into(),
            })?;
            for t in page.route_tables() {
                let Some(id) = t.route_table_id() else {
                    continue;
                };
                let default_route = default_route(t).map(|r| {
                    let target = if let Some(e) = r.network_interface_id() {
                        Target::Interface(e.to_string())
                    } else if let Some(i) = r.instance_id() {
                        Target::Instance(i.to_string())
                    } else {
                        Target::Other(route_target(r).unwrap_or("unknown").to_string())
                    };
                    Route {
                        target,
                        blackhole: r.state().is_some_and(|s| s.as_str() == "blackhole"),
                    }
                });
                out.push(Table {
                    id: id.to_string(),
                    default_route,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Points the default route of `table` at `eni` (create when `create`).
    pub async fn write_route(&self, table: &str, eni: &str, create: bool) -> Result<(), Error> {
        let err = |op| {
            move |e: ApiError| Error::WriteRoute {
                op,
                route_table_id: table.to_string(),
                eni: eni.to_string(),
                source: e,
            }
        };
        if create {
            self.ec2
                .create_route()
                .route_table_id(table)
                .destination_cidr_block(DEFAULT_ROUTE)
                .network_interface_id(eni)
                .send()
                .await
                .map_err(|e| err("CreateRoute")(e.into()))?;
        } else {
            self.ec2
                .replace_route()
                .route_table_id(table)
                .destination_cidr_block(DEFAULT_ROUTE)
                .network_interface_id(eni)
                .send()
                .await
                .map_err(|e| err("ReplaceRoute")(e.into()))?;
        }
        Ok(())
    }

    /// The Elastic IP to hold: `allocation_id` if given, else one tagged
    /// `natd:egress=<stack>` in the VPC's account and region.
    pub async fn address(
        &self,
        allocation_id: Option<&str>,
        stack: &str,
    ) -> Result<Option<Address>, Error> {
        let req = self.ec2.describe_addresses();
        let (req, what) = match allocation_id {
            Some(a) => (req.allocation_ids(a), a.to_string()),
            None => (
                req.filters(tag_filter(EGRESS_TAG, stack)),
                format!("tag {EGRESS_TAG}={stack}"),
            ),
        };
        let resp = req.send().await.map_err(|e| Error::DescribeAddresses {
            what: what.clone(),
            source: e.into(),
        })?;
        let found = resp.addresses().first().map(|a| Address {
            allocation_id: a.allocation_id().unwrap_or_default().to_string(),
            public_ip: a.public_ip().unwrap_or_default().to_string(),
            eni_id: a.network_interface_id().map(str::to_string),
        });
        match (found, allocation_id) {
            (None, Some(a)) => Err(Error::NoSuchAddress(a.to_string())),
            (found, _) => Ok(found),
        }
    }

    /// Associates `allocation_id` with `eni`, taking it from wherever it is.
    pub async fn associate_address(&self, allocation_id: &str, eni: &str) -> Result<(), Error> {
        self.ec2
            .associate_address()
            .allocation_id(allocation_id)
            .network_interface_id(eni)
            .allow_reassociation(true)
            .send()
            .await
            .map_err(|e| Error::AssociateAddress {
                allocation_id: allocation_id.to_string(),
                eni: eni.to_string(),
                source: e.into(),
            })?;
        Ok(())
    }

    /// The stack's other live NAT instances (pending or running, in `vpc`), for pair
    /// mode: `(instance id, primary private IP, primary ENI, launch time)`.
    pub async fn stack_instances(&self, vpc: &str, stack: &str) -> Result<Vec<Member>, Error> {
        let mut out = Vec::new();
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(tag_filter(STACK_TAG, stack))
            .filters(Filter::builder().name("vpc-id").values(vpc).build())
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::Pair {
                op: "DescribeInstances",
                target: format!("tag {STACK_TAG}={stack}"),
                source: e.into(),
            })?;
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                let (Some(id), Some(ip)) = (
                    i.instance_id(),
                    i.private_ip_address().and_then(|a| a.parse().ok()),
                ) else {
                    continue;
                };
                let eni = i
                    .network_interfaces()
                    .iter()
                    .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
                    .or_else(|| i.network_interfaces().first())
                    .and_then(|n| n.network_interface_id())
                    .unwrap_or_default()
                    .to_string();
                out.push(Member {
                    instance_id: id.to_string(),
                    ip,
                    eni,
                    launch_time: i.launch_time().map(|t| t.secs()).unwrap_or(0),
                    handover: i
                        .tags()
                        .iter()
                        .any(|t| t.key() == Some(crate::contract::HANDOVER_TAG)),
                });
            }
        }
        Ok(out)
    }

    /// Every Elastic IP tagged `natd:egress=<stack>`, by allocation id, with the
    /// interface and private address each is associated with.
    pub async fn egress_addresses(&self, stack: &str) -> Result<Vec<Egress>, Error> {
        let resp = self
            .ec2
            .describe_addresses()
            .filters(tag_filter(EGRESS_TAG, stack))
            .send()
            .await
            .map_err(|e| Error::DescribeAddresses {
                what: format!("tag {EGRESS_TAG}={stack}"),
                source: e.into(),
            })?;
        let mut out: Vec<Egress> = resp
            .addresses()
            .iter()
            .map(|a| Egress {
                allocation_id: a.allocation_id().unwrap_or_default().to_string(),
                public_ip: a.public_ip().unwrap_or_default().to_string(),
                // An unassociated address has no interface (some endpoints answer "").
                eni: a
                    .network_interface_id()
                    .filter(|e| !e.is_empty())
                    .map(str::to_string),
                private_ip: a.private_ip_address().and_then(|p| p.parse().ok()),
            })
            .collect();
        out.sort_by(|a, b| a.allocation_id.cmp(&b.allocation_id));
        Ok(out)
    }

    /// The secondary private addresses of `eni`.
    pub async fn secondary_ips(&self, eni: &str) -> Result<Vec<std::net::Ipv4Addr>, Error> {
        let resp = self
            .ec2
            .describe_network_interfaces()
            .network_interface_ids(eni)
            .send()
            .await
            .map_err(|e| Error::DescribeInterfaces {
                ids: eni.to_string(),
                source: e.into(),
            })?;
        Ok(resp
            .network_interfaces()
            .iter()
            .flat_map(|n| n.private_ip_addresses())
            .filter(|a| a.primary() != Some(true))
            .filter_map(|a| a.private_ip_address().and_then(|p| p.parse().ok()))
            .collect())
    }

    /// Moves `ips` to `eni` (`AllowReassignment`): on AWS an Elastic IP associated with
    /// a moved address moves with it, in the same call.
    pub async fn move_private_ips(
        &self,
        eni: &str,
        ips: &[std::net::Ipv4Addr],
    ) -> Result<(), Error> {
        self.ec2
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(ips.iter().map(ToString::to_string).collect()))
            .allow_reassignment(true)
            .send()
            .await
            .map_err(|e| Error::Pair {
                op: "AssignPrivateIpAddresses",
                target: format!("{} -> {eni} (AllowReassignment)", join_ips(ips)),
                source: e.into(),
            })?;
        Ok(())
    }

    /// Gives `eni` `count` new secondary private addresses; returns them.
    pub async fn new_private_ips(
        &self,
        eni: &str,
        count: usize,
    ) -> Result<Vec<std::net::Ipv4Addr>, Error> {
        let resp = self
            .ec2
            .assign_private_ip_addresses()
            .network_interface_id(eni)
            .secondary_private_ip_address_count(count as i32)
            .send()
            .await
            .map_err(|e| Error::Pair {
                op: "AssignPrivateIpAddresses",
                target: format!("{count} new address(es) on {eni}"),
                source: e.into(),
            })?;
        Ok(resp
            .assigned_private_ip_addresses()
            .iter()
            .filter_map(|a| a.private_ip_address().and_then(|p| p.parse().ok()))
            .collect())
    }

    /// Takes `ips` off `eni`.
    pub async fn release_private_ips(
        &self,
        eni: &str,
        ips: &[std::net::Ipv4Addr],
    ) -> Result<(), Error> {
        self.ec2
            .unassign_private_ip_addresses()
            .network_interface_id(eni)
            .set_private_ip_addresses(Some(ips.iter().map(ToString::to_string).collect()))
            .send()
            .await
            .map_err(|e| Error::Pair {
                op: "UnassignPrivateIpAddresses",
                target: format!("{} on {eni}", join_ips(ips)),
                source: e.into(),
            })?;
        Ok(())
    }

    /// Associates `allocation_id` with the private address `ip` of `eni`; refused
    /// (`Resource.AlreadyAssociated`) when it is associated elsewhere and `reassociate`
    /// is false: the pair's claim on a free address is first come, first served.
    pub async fn associate_address_at(
        &self,
        allocation_id: &str,
        eni: &str,
        ip: std::net::Ipv4Addr,
        reassociate: bool,
    ) -> Result<(), Error> {
        self.ec2
            .associate_address()
            .allocation_id(allocation_id)
            .network_interface_id(eni)
            .private_ip_address(ip.to_string())
            .allow_reassociation(reassociate)
            .send()
            .await
            .map_err(|e| Error::AssociateAddress {
                allocation_id: allocation_id.to_string(),
                eni: format!("{eni} {ip}"),
                source: e.into(),
            })?;
        Ok(())
    }

    /// Our Auto Scaling group and lifecycle state, or `None` outside a group.
    pub async fn membership(&self, instance_id: &str) -> Result<Option<Membership>, Error> {
        let resp = self
            .asg
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| Error::AutoScaling {
                op: "DescribeAutoScalingInstances",
                target: instance_id.to_string(),
                source: e.into(),
            })?;
        Ok(resp.auto_scaling_instances().first().map(|i| Membership {
            group: i.auto_scaling_group_name().unwrap_or_default().to_string(),
            lifecycle_state: i.lifecycle_state().unwrap_or_default().to_string(),
        }))
    }

    /// Completes every launch lifecycle hook of `group` for our instance with
    /// `result` (`CONTINUE` or `ABANDON`); returns the hooks completed.
    pub async fn complete_launch(
        &self,
        group: &str,
        instance_id: &str,
        result: &str,
    ) -> Result<Vec<String>, Error> {
        let hooks = self
            .asg
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .send()
            .await
            .map_err(|e| Error::AutoScaling {
                op: "DescribeLifecycleHooks",
                target: group.to_string(),
                source: e.into(),
            })?;
        let mut done = Vec::new();
        for h in hooks.lifecycle_hooks() {
            if h.lifecycle_transition() != Some(LAUNCHING_TRANSITION) {
                continue;
            }
            let Some(name) = h.lifecycle_hook_name() else {
                continue;
            };
            self.asg
                .complete_lifecycle_action()
                .auto_scaling_group_name(group)
                .lifecycle_hook_name(name)
                .instance_id(instance_id)
                .lifecycle_action_result(result)
                .send()
                .await
                .map_err(|e| Error::AutoScaling {
                    op: "CompleteLifecycleAction",
                    target: format!("{group}/{name}"),
                    source: e.into(),
                })?;
            done.push(name.to_string());
        }
        Ok(done)
    }

    /// Writes natd's health summary into the `natd:health` tag of our instance.
    pub async fn publish_health(&self, instance_id: &str, value: &str) -> Result<(), Error> {
        self.ec2
            .create_tags()
            .resources(instance_id)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(HEALTH_TAG)
                    .value(value)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::Tag {
                key: HEALTH_TAG,
                instance_id: instance_id.to_string(),
                source: e.into(),
            })?;
        Ok(())
    }

    /// Marks our instance Unhealthy so its group replaces it.
    pub async fn set_unhealthy(&self, instance_id: &str) -> Result<(), Error> {
        self.asg
            .set_instance_health()
            .instance_id(instance_id)
            .health_status("Unhealthy")
            // natd only reports after repeated failed repairs; a grace period would
            // only delay the replacement.
            .should_respect_grace_period(false)
            .send()
            .await
            .map_err(|e| Error::AutoScaling {
                op: "SetInstanceHealth",
                target: instance_id.to_string(),
                source: e.into(),
            })?;
        Ok(())
    }
}

/// The `0.0.0.0/0` route of a route table, if it has one.
pub fn default_route(t: &aws_sdk_ec2::types::RouteTable) -> Option<&aws_sdk_ec2::types::Route> {
    t.routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE))
}

/// What a route points at (ENI, instance, NAT gateway, gateway, peering or transit
/// gateway), as its id.
pub fn route_target(r: &aws_sdk_ec2::types::Route) -> Option<&str> {
    [
        r.network_interface_id(),
        r.instance_id(),
        r.nat_gateway_id(),
        r.gateway_id(),
        r.vpc_peering_connection_id(),
        r.transit_gateway_id(),
    ]
    .into_iter()
    .flatten()
    .next()
}

fn join_ips(ips: &[std::net::Ipv4Addr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a lifecycle state means a launch hook waits for us.
pub fn waits_for_launch(state: &str) -> bool {
    state == LifecycleState::PendingWait.as_str()
}
