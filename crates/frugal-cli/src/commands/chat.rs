//! `frugal chat`: an interactive conversation with history, under any policy.

use crate::args::{PolicyArg, SamplingArgs};
use crate::session::Session;
use anyhow::Result;
use clap::Args;
use frugal_engine::generate::generate;
use frugal_engine::model::chat_template::ChatMessage;
use std::io::{BufRead, Write};

#[derive(Args)]
pub struct ChatArgs {
    /// System message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    policy: PolicyArg,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(session: &Session, args: &ChatArgs) -> Result<()> {
    let req = args.sampling.request()?;
    let spec = args.policy.spec()?;
    session.check_policy(&spec)?;
    let lm = session.load_model()?;
    let mut history: Vec<ChatMessage> = Vec::new();
    let reset = |h: &mut Vec<ChatMessage>| {
        h.clear();
        if let Some(s) = &args.system {
            h.push(ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
    };
    reset(&mut history);
    eprintln!(
        "frugal chat ({}, policy {spec}) — /reset clears the history, /exit quits",
        lm.description
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                reset(&mut history);
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage {
            role: "user".into(),
            content: line.trim_end().into(),
        });
        let prompt = lm.chat_template.render(&history, true)?;
        let ids = lm.tokenizer.encode(&prompt)?;
        // The whole conversation is re-run each turn: simple and exact, and the policy sees
        // the whole history; the KV of earlier turns could be kept instead, at the cost of
        // tracking template boundaries.
        let mut seq = frugal_methods::build(&spec, lm.model.config().kv_layout())?;
        let out = match generate(&lm, &mut seq, &ids, &req, &mut |piece| {
            let _ = stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush());
            true
        }) {
            Ok(out) => out,
            Err(e) => {
                history.pop();
                eprintln!("error: {e} (use /reset to start over)");
                continue;
            }
        };
        println!();
        history.push(ChatMessage {
            role: "assistant".into(),
            content: out.text,
        });
    }
}
