//! `tessera-gateway`: put any MCP server behind Tessera's per-request checks.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("tessera-gateway: not yet wired")
}
