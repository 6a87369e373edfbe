# The natd AMI: Amazon Linux 2023 minimal, arm64, with the natd RPM installed and its
# unit enabled. Nothing is installed at boot: the image carries everything natd needs.

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "instance_type" {
  type        = string
  default     = "t4g.small"
  description = "Builder instance type (arm64)."
}

variable "ami_name" {
  type    = string
  default = "natd-al2023-arm64"
}

variable "source_ami_name" {
  type        = string
  default     = "al2023-ami-minimal-*-kernel-*-arm64"
  description = "Name filter for the Amazon Linux 2023 minimal arm64 source image."
}

variable "rpm" {
  type        = string
  default     = "target/generate-rpm/natd.rpm"
  description = "The natd RPM built by `cargo generate-rpm` (see README)."
}

variable "natd_version" {
  type    = string
  default = "0.1.0"
}

locals {
  stamp = formatdate("YYYYMMDDhhmmss", timestamp())
}

source "amazon-ebs" "natd" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "${var.ami_name}-${var.natd_version}-${local.stamp}"
  ssh_username  = "ec2-user"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "arm64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  # natctl finds the image by these tags (natd:ami) or by name prefix.
  tags = {
    Name           = var.ami_name
    "natd:ami"     = var.ami_name
    "natd:version" = var.natd_version
  }
}

build {
  sources = ["source.amazon-ebs.natd"]

  provisioner "file" {
    source      = var.rpm
    destination = "/tmp/natd.rpm"
  }

  provisioner "shell" {
    script = "packer/provision.sh"
  }
}
