# Packer 1.10+ loads the Amazon builder as a plugin. Kept in its own file so the
# template itself also validates with older Packer releases that have the builder
# built in (see README, "The AMI").
packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}
