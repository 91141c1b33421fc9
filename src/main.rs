//! The `fastswitch` binary: parse, run, print any error once, exit with a documented code.
use clap::Parser;
use fastswitch::{cli, exit};

fn main() {
    let args = cli::Cli::parse();
    let json = args.global.json;
    let code = match cli::run(args, &mut std::io::stdout().lock()) {
        Ok(code) => code,
        Err(err) => {
            let code = exit::code_for(&err);
            if json {
                let doc = serde_json::json!({
                    "error": format!("{err:#}"),
                    "exit_code": code.code(),
                    "kind": code,
                });
                println!("{doc}");
            }
            eprintln!("error: {err:#}");
            code
        }
    };
    std::process::exit(code.code());
}
