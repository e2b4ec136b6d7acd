//! The command line: `secmx serve`, `secmx check-config`, `secmx --version`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

const USAGE: &str = "\
usage: secmx serve [--config FILE] [--data-dir DIR]
       secmx check-config [--config FILE]
       secmx --version

  serve         run the mail transfer agent (without --config: the embedded default,
                a best-effort receiver on 127.0.0.1:2525 with its data in ./secmx-data)
  check-config  validate a configuration file and exit
  --config      the TOML configuration file (see docs/configuration.md)
  --data-dir    overrides data_dir from the configuration
";

/// Exit status for a configuration or usage error.
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Serve {
        config: Option<PathBuf>,
        data_dir: Option<PathBuf>,
    },
    CheckConfig {
        config: Option<PathBuf>,
    },
    Version,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let Some(verb) = args.first() else {
        return Err("no command given".into());
    };
    let mut config = None;
    let mut data_dir = None;
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| {
            rest.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--config" | "-c" => config = Some(value("--config")?),
            "--data-dir" => data_dir = Some(value("--data-dir")?),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    match verb.as_str() {
        "serve" => Ok(Command::Serve { config, data_dir }),
        "check-config" if data_dir.is_none() => Ok(Command::CheckConfig { config }),
        "--version" | "-V" | "version" => Ok(Command::Version),
        "--help" | "-h" | "help" => Ok(Command::Help),
        other => Err(format!("unknown command `{other}`")),
    }
}

fn load(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> Result<Config, ExitCode> {
    // A directory given on the command line is relative to the working directory.
    let data_dir = data_dir.map(|dir| std::path::absolute(&dir).unwrap_or(dir));
    match config {
        Some(path) => Config::load(&path, data_dir.as_deref()).map_err(|e| {
            eprintln!("secmx: configuration error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }),
        None => Ok(Config::embedded_default_with(data_dir.as_deref())),
    }
}

/// Runs the command line; the process exit status comes from here.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(problem) => {
            eprintln!("secmx: {problem}\n\n{USAGE}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    match command {
        Command::Version => {
            println!("secmx {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match load(config, None) {
            Ok(config) => {
                println!("{}: ok", config.source);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config, data_dir } => match load(config, data_dir) {
            Ok(config) => crate::runtime::run(config),
            Err(code) => code,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn serve_takes_config_and_data_dir() {
        let parsed = parse_args(&args(&["serve", "--config", "a.toml", "--data-dir", "/d"]));
        assert_eq!(
            parsed,
            Ok(Command::Serve {
                config: Some("a.toml".into()),
                data_dir: Some("/d".into())
            })
        );
    }

    #[test]
    fn missing_value_and_unknown_command_are_errors() {
        assert!(parse_args(&args(&["serve", "--config"])).is_err());
        assert!(parse_args(&args(&["launch"])).is_err());
        assert!(parse_args(&[]).is_err());
    }
}
