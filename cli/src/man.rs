//! natctl's man pages, generated from the clap definitions (so they never drift from
//! `--help`) plus the sections clap does not know: EXIT STATUS, ENVIRONMENT, EXAMPLES.

use crate::cli::Args;
use crate::error::Failure;
use clap::CommandFactory;

const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success (for \fBsetup\fR, also "No changes necessary").
.TP
\fB1\fR
An AWS call failed, got no answer within the timeouts, or a wait ran out; the message names the call, the resource and AWS's words.
.TP
\fB2\fR
Bad input: an argument, a VPC, subnet, function, secret or database that does not exist, a VPC that cannot get NAT as asked, or a resource of another stack. Refused before any change; retrying will not help.
.TP
\fB3\fR
\fBstatus\fR: egress is broken. \fBdoctor\fR: something breaks (with \fB--strict\fR: any finding).
"#;

const ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBAWS_REGION\fR, \fBAWS_DEFAULT_REGION\fR
The region, unless \fB--region\fR is given.
.TP
\fBAWS_PROFILE\fR
The profile in ~/.aws/config and ~/.aws/credentials, unless \fB--profile\fR is given.
.TP
\fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR
Credentials, as the AWS CLI reads them (the standard credential chain).
.TP
\fBAWS_ENDPOINT_URL\fR
An endpoint for every service (an emulator), unless \fB--endpoint-url\fR is given.
"#;

const EXAMPLES: &str = r#".SH EXAMPLES
.TP
Dev egress: one self-healing NAT instance, and the Lambda wiring
.B natctl setup --env dev --vpc vpc-0abc --name app --lambda app-fn --secret app/db --db-instance app-db
.TP
See what a switch to prod would do, then do it
.B natctl plan --env prod --vpc vpc-0abc --name app --output json
.br
.B natctl setup --env prod --vpc vpc-0abc --name app
.TP
Is egress working?
.B natctl status --name app
.TP
Why can this function not reach its secret?
.B natctl doctor --vpc vpc-0abc --lambda app-fn
.TP
What would teardown remove?
.B natctl teardown --name app --dry-run
"#;

/// The man page of natctl, or of one of its subcommands.
pub fn page(subcommand: Option<&str>) -> Result<String, Failure> {
    let root = Args::command();
    let cmd = match subcommand {
        None => root,
        Some(name) => {
            let names: Vec<String> = root
                .get_subcommands()
                .map(|s| s.get_name().to_string())
                .collect();
            let sub = root.find_subcommand(name).cloned().ok_or_else(|| {
                Failure::BadInput(format!(
                    "no subcommand {name:?}; natctl has {}",
                    names.join(", ")
                ))
            })?;
            sub.display_name(format!("natctl-{name}"))
                .bin_name(format!("natctl {name}"))
        }
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| Failure::Internal(format!("man page: {e}")))?;
    let mut page = String::from_utf8_lossy(&buf).into_owned();
    page.push_str(EXIT_STATUS);
    page.push_str(ENVIRONMENT);
    if subcommand.is_none() {
        page.push_str(EXAMPLES);
    }
    Ok(page)
}
