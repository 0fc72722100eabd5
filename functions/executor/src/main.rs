use herald_executor::{handle, Executor};
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let executor = Executor::from_env().await?;
    let executor = &executor;
    run(service_fn(move |event| handle(executor, event))).await
}
