//! `frugal generate`: one prompt, streamed greedy (or sampled) output, under any policy.

use crate::args::{PolicyArg, SamplingArgs};
use crate::session::Session;
use anyhow::Result;
use clap::Args;
use frugal_engine::generate::generate;
use frugal_engine::model::chat_template::ChatMessage;
use std::io::Write;

#[derive(Args)]
pub struct GenerateArgs {
    /// The prompt text.
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message when --chat is set.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    policy: PolicyArg,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(session: &Session, args: &GenerateArgs) -> Result<()> {
    let req = args.sampling.request()?;
    let spec = args.policy.spec()?;
    session.check_policy(&spec)?;
    let lm = session.load_model()?;
    let text = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        });
        lm.chat_template.render(&messages, true)?
    } else {
        args.prompt.clone()
    };
    let ids = lm.tokenizer.encode(&text)?;
    let mut seq = frugal_methods::build(&spec, lm.model.config().kv_layout())?;
    let mut stdout = std::io::stdout();
    let out = generate(&lm, &mut seq, &ids, &req, &mut |piece| {
        let _ = stdout
            .write_all(piece.as_bytes())
            .and_then(|_| stdout.flush());
        true
    })?;
    println!();
    eprintln!(
        "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s decode; stop: {:?}; policy {}: peak KV {:.2} MiB]",
        out.prompt_tokens,
        out.prompt_tokens as f64 / out.prefill_secs,
        out.tokens.len(),
        out.tokens.len() as f64 / out.decode_secs.max(1e-9),
        out.finish,
        spec,
        seq.peak_kv_bytes() as f64 / 1048576.0,
    );
    Ok(())
}
