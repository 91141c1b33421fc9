//! The `fastswitch` binary: parse, run, print any error once, exit with a documented code.
use clap::Parser;
use fastswitch::{cli, exit};

fn main() {
    let args = cli::Cli::parse();
    let json = args.global.json;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = cli::run(args, &mut out);
    if let Err(e) = std::io::Write::flush(&mut out) {
        eprintln!("error: writing to stdout: {e}");
    }
    drop(out);
    let code = match result {
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
