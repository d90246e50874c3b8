use clap::Parser;
use promptd::cli::{init_tracing, Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    promptd::model::set_cpu_matmul(cli.cpu_matmul);
    promptd::model::int8::set_int8_kernel(cli.int8_kernel);
    let result = match cli.command {
        Command::Predict(args) => promptd::cli::predict::run(args),
        Command::Tune(args) => promptd::cli::tune::run_tune(args),
        Command::Eval(args) => promptd::cli::tune::run_eval(args),
        Command::Serve(args) => promptd::cli::serve::run(args),
        Command::HashKey(args) => promptd::cli::keys::run(args),
        Command::Inspect(args) => promptd::cli::inspect::run(args),
        Command::Neighbors(args) => promptd::cli::neighbors::run(args),
        Command::Convert(args) => promptd::cli::convert::run(args),
        Command::Store(args) => promptd::cli::store::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("promptd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
