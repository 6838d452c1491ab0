"""Example prompts that show what ERNIE-Image does well (text in the image, in Chinese and English; posters;
layouts; photos), each with the size it looks best at: rows of (title, prompt, width, height)."""

EXAMPLES = [
    (
        "Poster, English title",
        'A minimalist poster for a jazz night: a golden saxophone on deep navy, the title "BLUE NOTE FRIDAYS" in '
        'large art-deco letters, and "Live at 9 PM · Free entry" below',
        848,
        1264,
    ),
    (
        "Chinese shop sign (中文招牌)",
        "一家街角咖啡店的木质招牌，上面用毛笔字写着“晨光咖啡”，下方小字“手冲 · 烘焙 · 甜点”，清晨阳光，写实摄影",
        1024,
        1024,
    ),
    (
        "Infographic",
        'An infographic titled "How coffee gets to your cup" with five numbered steps in a row — Grow, Harvest, Roast, '
        "Grind, Brew — each with a flat icon and a one-line caption, clean pastel palette",
        1376,
        768,
    ),
    (
        "Street photo",
        "A candid street photograph of an elderly man reading a newspaper at a café in Lisbon, soft morning light, "
        "shallow depth of field, 35 mm film look",
        1264,
        848,
    ),
    (
        "Chinese poster (春节海报)",
        "春节海报：红色背景，金色大字“新春快乐”，两侧挂着灯笼，底部写着“2026 马年大吉”，喜庆的中国风插画",
        768,
        1376,
    ),
    (
        "Recipe card layout",
        'A hand-drawn recipe card for "Lemon Pancakes": an ingredient list on the left, three numbered steps on the '
        "right, little doodles of lemons and a frying pan, cream paper texture",
        1200,
        896,
    ),
    (
        "Neon sign photo",
        'A neon sign on a brick wall that reads "OPEN LATE" with a glowing pink arrow, rainy night, reflections on '
        "wet pavement, cinematic photo",
        896,
        1200,
    ),
]
