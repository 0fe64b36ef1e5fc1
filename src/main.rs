#![forbid(unsafe_code)]

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    instance_registrar::install_crypto_provider();
    instance_registrar::cli::Cli::parse_and_run().await
}
